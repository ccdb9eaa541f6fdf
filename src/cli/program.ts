/**
 * The `mirrorbd` command line: parses arguments, talks to the daemon over
 * the control socket (or, for offline verbs like create-md, to the disk),
 * prints. Every failure is one line on stderr and a non-zero exit status.
 */
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { registerCheck } from '../check/cli.js';
import { findResource, formatConfig, loadConfig, localNode } from '../config/index.js';
import type { Config } from '../config/model.js';
import { DEFAULT_CONFIG_FILE } from '../config/model.js';
import { MirrorError } from '../errors.js';
import { daemonPaths, resolveRunDir } from '../daemon/run-dir.js';
import type { ResourceStatus } from '../resource/status.js';
import { callDaemon, daemonAnswers, type ControlCall } from './control-client.js';
import { ensureDaemon } from './daemon-launcher.js';
import { followEvents } from './events.js';
import { formatBytes, formatStatus } from './format-status.js';

export const STATUS_WATCH_INTERVAL_MS = 1000;

interface GlobalOpts {
  config: string;
  node: string;
}

export function buildProgram(): Command {
  const program = new Command('mirrorbd')
    .description('a replicated block device with an NBD frontend')
    .option('-c, --config <file>', 'config file (env MIRRORBD_CONFIG)', process.env.MIRRORBD_CONFIG ?? DEFAULT_CONFIG_FILE)
    .option('--node <name>', 'this node\'s name in the config (env MIRRORBD_NODE)', process.env.MIRRORBD_NODE ?? os.hostname())
    .showHelpAfterError()
    .exitOverride()
    .configureOutput({ outputError: (s, write) => write(`mirrorbd: ${s.replace(/^error: /, '')}`) });

  const globals = (): GlobalOpts => program.opts<GlobalOpts>();
  const ctx = async (): Promise<{ config: Config; runDir: string; socket: string; g: GlobalOpts }> => {
    const g = globals();
    const config = await loadConfig(path.resolve(g.config));
    const runDir = resolveRunDir(config.global.runDir, g.node);
    return { config, runDir, socket: daemonPaths(runDir, g.node).socket, g };
  };
  const call = async (c: ControlCall): Promise<unknown> => callDaemon((await ctx()).socket, c);

  program
    .command('create-md')
    .argument('<resource>')
    .option('--force', 'overwrite existing or corrupt metadata')
    .description("write fresh metadata on this node's disk")
    .action(async (name: string, o: { force?: boolean }) => {
      const { config, socket, g } = await ctx();
      const rc = findResource(config, name);
      const local = localNode(rc, g.node);
      if (local.disk === null) throw new MirrorError('ERR_BAD_CONFIG', `${name}: node ${g.node} is diskless (disk none); it has no metadata`);
      if (await daemonAnswers(socket)) {
        const up = (await callDaemon(socket, { cmd: 'status', resource: null })) as ResourceStatus[];
        if (up.some((r) => r.name === name)) {
          throw new MirrorError('ERR_ALREADY_UP', `${name} is up on ${g.node}; run 'mirrorbd down ${name}' first`);
        }
      }
      const { createMd } = await import('../meta/index.js');
      const { layout } = await createMd({
        diskPath: local.disk,
        metaDisk: local.metaDisk,
        nodeId: local.nodeId,
        maxPeers: Math.max(1, rc.nodes.length - 1),
        force: o.force === true,
      });
      console.log(`${name}: metadata written on ${local.metaDisk === 'internal' ? local.disk : local.metaDisk} (data ${formatBytes(layout.dataSizeBytes)}, metadata ${formatBytes(layout.mdSizeBytes)})`);
    });

  program
    .command('up')
    .argument('<resource>')
    .description('attach the disk and open the NBD listener (starts the daemon if needed)')
    .action(async (name: string) => {
      const { config, runDir, g } = await ctx();
      localNode(findResource(config, name), g.node); // fail here, before starting anything
      const socket = await ensureDaemon({ configFile: path.resolve(g.config), node: g.node, runDir });
      await callDaemon(socket, { cmd: 'up', resource: name, configFile: path.resolve(g.config) });
    });

  program
    .command('down')
    .argument('<resource>')
    .description('close the NBD listener and detach the disk')
    .action(async (name: string) => {
      await call({ cmd: 'down', resource: name });
    });

  program
    .command('primary')
    .argument('<resource>')
    .option('--force', 'promote even if the local data is not UpToDate')
    .description('make this node Primary: it serves the NBD export')
    .action(async (name: string, o: { force?: boolean }) => {
      await call({ cmd: 'primary', resource: name, force: o.force === true });
    });

  program
    .command('secondary')
    .argument('<resource>')
    .option('--force', 'demote even with NBD clients connected (they get ESHUTDOWN)')
    .description('make this node Secondary: it stops serving the export')
    .action(async (name: string, o: { force?: boolean }) => {
      await call({ cmd: 'secondary', resource: name, force: o.force === true });
    });

  program
    .command('connect')
    .argument('<resource>')
    .option('--discard-my-data', 'after a split brain: this node yields; it resyncs what either side changed since the split')
    .description('connect to the peers (after disconnect, or from StandAlone)')
    .action(async (name: string, o: { discardMyData?: boolean }) => {
      await call({ cmd: 'connect', resource: name, discardMyData: o.discardMyData === true });
    });

  program
    .command('disconnect')
    .argument('<resource>')
    .description('drop the connections to the peers and stay StandAlone')
    .action(async (name: string) => {
      await call({ cmd: 'disconnect', resource: name });
    });

  program
    .command('status')
    .argument('[resource]')
    .option('--json', 'print JSON (docs/status.md)')
    .option('--watch', 'refresh until interrupted')
    .description('role, disk, NBD clients and peers of the resources that are up')
    .action(async (name: string | undefined, o: { json?: boolean; watch?: boolean }) => {
      const { socket, g } = await ctx();
      const fetch = async (): Promise<ResourceStatus[]> => {
        if (name === undefined && !(await daemonAnswers(socket))) return [];
        return (await callDaemon(socket, { cmd: 'status', resource: name ?? null })) as ResourceStatus[];
      };
      const show = (list: ResourceStatus[]): string => {
        if (o.json) return JSON.stringify(list, null, o.watch ? undefined : 2);
        return list.length > 0 ? formatStatus(list) : `no resource is up on ${g.node}\n`;
      };
      if (!o.watch) {
        process.stdout.write(`${show(await fetch())}\n`);
        return;
      }
      await watch(async () => {
        const text = show(await fetch());
        // A terminal gets a screen redrawn in place, headed like watch(1);
        // a pipe gets plain successive blocks (or JSON lines) to parse.
        if (!o.json && process.stdout.isTTY) {
          const every = `Every ${STATUS_WATCH_INTERVAL_MS / 1000}s: mirrorbd status${name ? ` ${name}` : ''} on ${g.node}`;
          process.stdout.write(`\x1b[2J\x1b[H${every}   ${new Date().toLocaleTimeString()}   (Ctrl-C to stop)\n\n`);
        }
        process.stdout.write(`${text}\n`);
      });
    });

  const simple: Array<[string, string]> = [
    ['attach', 'attach the disk again after detach; it resyncs what it missed'],
    ['detach', 'go on without the local disk (a Primary serves through an UpToDate peer)'],
    ['verify', 'online verify: compare digests with the peers, mark blocks that differ (status and events show the count)'],
    ['invalidate', 'mark the local data Inconsistent: a full resync from a peer follows'],
    ['invalidate-remote', "mark the peers' data Inconsistent: a full resync to them follows"],
    ['pause-sync', 'pause a running resync'],
    ['resume-sync', 'resume a paused resync'],
    ['outdate', 'mark the local data Outdated: it is not promoted without --force (what a fence-peer handler runs on the peer)'],
    ['resume-io', 'resume I/O that fencing resource-and-stonith left suspended after a failed fence-peer'],
  ];
  for (const [verb, description] of simple) {
    program
      .command(verb)
      .argument('<resource>')
      .description(description)
      .action(async (name: string) => {
        await call({ cmd: verb, resource: name } as ControlCall);
      });
  }

  program
    .command('new-current-uuid')
    .argument('<resource>')
    .option('--clear-bitmap', 'two fresh, connected disks known to be equal: skip the initial sync, both UpToDate')
    .description('start a new data generation (connected peers take it too)')
    .action(async (name: string, o: { clearBitmap?: boolean }) => {
      await call({ cmd: 'new-current-uuid', resource: name, clearBitmap: o.clearBitmap === true });
    });

  program
    .command('events')
    .argument('[resource]')
    .option('--json', 'one JSON object per line (docs/events.md)')
    .description('follow state changes as they happen, in order, until interrupted')
    .action(async (name: string | undefined, o: { json?: boolean }) => {
      const { socket } = await ctx();
      await followEvents(socket, name ?? null, o.json === true, (line) => process.stdout.write(`${line}\n`));
    });

  program
    .command('dump')
    .argument('[resource]')
    .description('print the parsed config with every default filled in')
    .action(async (name: string | undefined) => {
      const { config } = await ctx();
      if (name !== undefined) findResource(config, name);
      process.stdout.write(formatConfig(config, name));
    });

  program
    .command('dump-md')
    .argument('<resource>')
    .description("print this node's metadata for the resource")
    .action(async (name: string) => {
      const { config, g } = await ctx();
      const local = localNode(findResource(config, name), g.node);
      if (local.disk === null) throw new MirrorError('ERR_BAD_CONFIG', `${name}: node ${g.node} is diskless (disk none)`);
      const { formatMd, openMd } = await import('../meta/index.js');
      const md = await openMd({ diskPath: local.disk, metaDisk: local.metaDisk, readOnly: true });
      try {
        process.stdout.write(formatMd(md.superblock, md.layout));
      } finally {
        await md.close();
      }
    });

  registerCheck(program);

  program
    .command('daemon')
    .option('--exit-when-idle', 'exit when the last resource goes down')
    .description('run the node daemon in the foreground (for systemd)')
    .action(async (o: { exitWhenIdle?: boolean }) => {
      const { config, runDir, g } = await ctx();
      // Loaded only here: the daemon's modules take longer to load than every
      // other command needs to run (about 0.1 s of each CLI call).
      const { runDaemon } = await import('./run-daemon.js');
      await runDaemon({ config, runDir, node: g.node, exitWhenIdle: o.exitWhenIdle === true });
    });

  return program;
}

/** Run `tick` every interval until SIGINT/SIGTERM; a failing tick ends the watch. */
async function watch(tick: () => Promise<void>): Promise<void> {
  let stop = false;
  const onSignal = (): void => {
    stop = true;
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    while (!stop) {
      await tick();
      await new Promise((r) => setTimeout(r, STATUS_WATCH_INTERVAL_MS));
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
