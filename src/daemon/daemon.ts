/**
 * The node process: hosts this node's resources, answers the control socket,
 * and shuts down cleanly on SIGTERM (NBD clients get ESHUTDOWN, data is
 * flushed, Primaries demote so the next start is not a crashed Primary).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { findResource, loadConfig, localNode } from '../config/index.js';
import { MirrorError } from '../errors.js';
import { NbdServer } from '../nbd/server.js';
import { Resource } from '../resource/resource.js';
import type { ResourceStatus } from '../resource/status.js';
import type { ControlRequest } from './control-protocol.js';
import { ControlServer } from './control-server.js';
import { EventBus } from './event-bus.js';
import { claimPidFile, daemonPaths, type DaemonPaths } from './run-dir.js';

export interface DaemonOptions {
  node: string;
  runDir: string;
  log: Logger;
  /** Exit when the last resource goes down (daemons that `up` started). */
  exitWhenIdle: boolean;
}

export class Daemon {
  private readonly resources = new Map<string, Resource>();
  private readonly nbd: NbdServer;
  private readonly paths: DaemonPaths;
  private control: ControlServer | null = null;
  private stopping: Promise<void> | null = null;
  /** Serialises state-changing commands: one `up`/`primary`/... at a time. */
  private queue: Promise<unknown> = Promise.resolve();
  private readonly stoppedCallbacks: Array<() => void> = [];
  readonly events = new EventBus();

  constructor(private readonly opts: DaemonOptions) {
    this.paths = daemonPaths(opts.runDir, opts.node);
    this.nbd = new NbdServer({ logger: opts.log.child({ part: 'nbd' }) });
  }

  async start(): Promise<void> {
    await fsp.mkdir(this.opts.runDir, { recursive: true, mode: 0o755 });
    await claimPidFile(this.paths);
    this.control = new ControlServer(this.paths.socket, (r) => this.handle(r), this.opts.log.child({ part: 'control' }), (_res, sub) =>
      this.events.subscribe(sub),
    );
    await this.control.listen();
    this.opts.log.info({ pid: process.pid, socket: this.paths.socket }, 'daemon started');
  }

  /** Resolves when the daemon has stopped (after shutdown()). */
  onStopped(cb: () => void): void {
    this.stoppedCallbacks.push(cb);
  }

  private handle(req: ControlRequest): Promise<unknown> {
    if (req.cmd === 'ping') return Promise.resolve({ pid: process.pid, node: this.opts.node });
    if (req.cmd === 'status') return Promise.resolve(this.status(req.resource));
    if (this.stopping) return Promise.reject(new MirrorError('ERR_DAEMON_UNREACHABLE', 'the daemon is shutting down'));
    const run = this.queue.then(() => this.handleChange(req));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async handleChange(req: ControlRequest): Promise<unknown> {
    switch (req.cmd) {
      case 'up':
        return this.up(req.resource, req.configFile);
      case 'down': {
        const r = this.get(req.resource);
        await r.down({ forceClients: false });
        this.resources.delete(r.name);
        if (this.resources.size === 0 && this.opts.exitWhenIdle) {
          setImmediate(() => void this.shutdown('last resource went down'));
        }
        return null;
      }
      case 'primary':
        await this.get(req.resource).primary(req.force);
        return this.get(req.resource).status();
      case 'secondary':
        await this.get(req.resource).secondary(req.force);
        return this.get(req.resource).status();
      case 'connect':
        await this.get(req.resource).connect({ discardMyData: req.discardMyData });
        return null;
      case 'disconnect':
        await this.get(req.resource).disconnect();
        return null;
      case 'verify':
        this.get(req.resource).verify();
        return null;
      case 'attach':
        await this.get(req.resource).reattach();
        return null;
      case 'detach':
        await this.get(req.resource).detach();
        return null;
      case 'invalidate':
        await this.get(req.resource).invalidate();
        return null;
      case 'invalidate-remote':
        await this.get(req.resource).invalidateRemote();
        return null;
      case 'pause-sync':
        this.get(req.resource).pauseSync();
        return null;
      case 'resume-sync':
        this.get(req.resource).resumeSync();
        return null;
      case 'outdate':
        await this.get(req.resource).outdate();
        return null;
      case 'resume-io':
        this.get(req.resource).resumeIo();
        return null;
      case 'new-current-uuid':
        await this.get(req.resource).newCurrentUuid(req.clearBitmap);
        return null;
      case 'shutdown':
        setImmediate(() => void this.shutdown('shutdown requested'));
        return null;
      default:
        throw new MirrorError('ERR_BAD_COMMAND', `unexpected command ${req.cmd}`);
    }
  }

  private async up(name: string, configFile: string): Promise<ResourceStatus> {
    if (this.resources.has(name)) throw new MirrorError('ERR_ALREADY_UP', `${name} is already up on ${this.opts.node}`);
    const config = await loadConfig(path.resolve(configFile));
    const rc = findResource(config, name);
    const local = localNode(rc, this.opts.node);
    const resource = new Resource(rc, local, this.nbd, this.opts.log.child({ resource: name }), (e) =>
      this.events.emit({ ...e, resource: name }),
    );
    await resource.up();
    this.resources.set(name, resource);
    return resource.status();
  }

  private get(name: string): Resource {
    const r = this.resources.get(name);
    if (!r) throw new MirrorError('ERR_NOT_UP', `${name} is not up on ${this.opts.node}`);
    return r;
  }

  private status(name: string | null): ResourceStatus[] {
    if (name !== null) return [this.get(name).status()];
    return [...this.resources.values()].map((r) => r.status());
  }

  /** Stop everything; safe to call more than once. */
  shutdown(reason: string): Promise<void> {
    if (this.stopping === null) this.stopping = this.doShutdown(reason);
    return this.stopping;
  }

  private async doShutdown(reason: string): Promise<void> {
    this.opts.log.info({ reason }, 'daemon shutting down');
    await this.queue;
    // Clients first: new requests get ESHUTDOWN, in-flight ones finish.
    await this.nbd.close().catch((e: unknown) => this.opts.log.error({ err: e }, 'closing NBD server'));
    for (const r of this.resources.values()) {
      await r.down({ forceClients: true }).catch((e: unknown) => this.opts.log.error({ err: e, resource: r.name }, 'down failed'));
    }
    this.resources.clear();
    await this.control?.close().catch(() => undefined);
    await fsp.rm(this.paths.pid, { force: true });
    this.opts.log.info('daemon stopped');
    for (const cb of this.stoppedCallbacks) cb();
  }
}
