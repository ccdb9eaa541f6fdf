/**
 * Boots the test guest once under qemu (TCG, no KVM) and runs a scenario in
 * it: the steps of init.sh named by the caller, against an NBD server on the
 * host's loopback.
 *
 * How the guest reaches the server: qemu's user network with restrict=on (the
 * guest can reach nothing, on the host or beyond) and one guestfwd rule. For
 * each TCP connection the guest opens to 10.0.2.100:10809, qemu runs
 * guestfwd-bridge.mjs with that connection as its stdin/stdout, and the
 * bridge connects to 127.0.0.1:PORT. A guestfwd to a chardev (tcp:...) does
 * not work for NBD: qemu opens the chardev once, at start, and nothing tells
 * the server when the guest connects, so the greeting (the server speaks
 * first) is sent to nobody.
 *
 * Per boot, a second small cpio archive holding /scenario (env, files) is
 * appended to the cached initramfs; the kernel unpacks both.
 *
 * qemu runs with -no-reboot and the kernel with panic=-1, so a guest that
 * powers off, panics or reboots ends qemu. Whatever happens, qemu is killed
 * by its pid at the deadline, and `kill()` ends a boot still running when a
 * test fails.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { buildCpio, type CpioEntry } from './cpio.js';
import type { GuestImage } from './guest-image.js';

const bridgeScript = fileURLToPath(new URL('./guestfwd-bridge.mjs', import.meta.url));

/** The address and port the guest uses; qemu forwards them to the host's server. */
export const GUEST_NBD_HOST = '10.0.2.100';
export const GUEST_NBD_PORT = 10809;
const MARKER = '@@mirrorbd ';

export type GuestStep = 'connect' | 'mkfs' | 'mount' | 'write' | 'sync' | 'read' | 'umount' | 'disconnect';

export interface GuestRunOptions {
  image: GuestImage;
  /** The host's NBD server: 127.0.0.1:hostPort. */
  hostPort: number;
  exportName: string;
  steps: GuestStep[];
  /** Files the `write` step copies into the filesystem (name -> content). */
  files?: Map<string, Buffer>;
  /** A scratch directory for this boot's initramfs; the caller removes it. */
  workDir: string;
  /** Kill qemu after this long. */
  timeoutMs?: number;
  /** nbd-client -t: seconds before a request without reply fails. */
  nbdTimeoutS?: number;
}

export interface GuestRun {
  ok: boolean;
  timedOut: boolean;
  exitCode: number | null;
  signal: string | null;
  /** Everything the guest printed on its serial console. */
  console: string;
  /** The marker lines (without the prefix), in order. */
  markers: string[];
  /** sha256 by file name, from the `write` and `read` steps. */
  sums: Map<string, string>;
  /** From qemu's start to /init's first marker. */
  bootMs: number | null;
  /** From /init's first marker to the scenario's end. */
  scenarioMs: number | null;
  totalMs: number;
  /** The step that failed or hung, if any. */
  failedStep: string | null;
}

const running = new Set<ChildProcess>();

/** Kill every qemu this module started that is still running (for afterAll/afterEach). */
export function killRunningGuests(): void {
  for (const child of running) {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

function scenarioArchive(opts: GuestRunOptions): Buffer {
  const env = [
    `NBD_HOST=${GUEST_NBD_HOST}`,
    `NBD_PORT=${GUEST_NBD_PORT}`,
    `NBD_EXPORT='${opts.exportName}'`,
    `NBD_TIMEOUT=${opts.nbdTimeoutS ?? 30}`,
    `STEPS='${opts.steps.join(' ')}'`,
    '',
  ].join('\n');
  const entries: CpioEntry[] = [
    { kind: 'dir', path: 'scenario' },
    { kind: 'file', path: 'scenario/env', data: Buffer.from(env) },
    { kind: 'dir', path: 'scenario/files' },
  ];
  for (const [name, data] of opts.files ?? []) {
    if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new Error(`unsafe guest file name: ${name}`);
    entries.push({ kind: 'file', path: `scenario/files/${name}`, data });
  }
  return gzipSync(buildCpio(entries), { level: 1 });
}

export async function runGuest(opts: GuestRunOptions): Promise<GuestRun> {
  const timeoutMs = opts.timeoutMs ?? 90_000;
  const initrd = path.join(opts.workDir, `initrd-${Date.now()}.gz`);
  await fsp.writeFile(initrd, Buffer.concat([await fsp.readFile(opts.image.initramfs), scenarioArchive(opts)]));

  // guestfwd's cmd is split like a shell command line by qemu (no shell
  // runs) and -netdev splits on commas, so neither path may hold one.
  const bridgeCmd = [process.execPath, bridgeScript, String(opts.hostPort), String(Math.ceil(timeoutMs / 1000) + 30)];
  for (const part of bridgeCmd) {
    if (/[,\s'"]/.test(part)) throw new Error(`guestfwd command part needs quoting, unsupported: ${part}`);
  }
  const netdev = [
    'user',
    'id=net0',
    'restrict=on',
    `guestfwd=tcp:${GUEST_NBD_HOST}:${GUEST_NBD_PORT}-cmd:${bridgeCmd.join(' ')}`,
  ].join(',');
  const args = [
    '-accel', 'tcg',
    '-m', '256',
    '-smp', '1',
    '-nodefaults',
    '-no-user-config',
    '-display', 'none',
    '-serial', 'stdio',
    '-no-reboot',
    '-kernel', opts.image.kernel,
    '-initrd', initrd,
    '-append', 'console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off',
    '-netdev', netdev,
    // romfile=: no PXE option ROM (ipxe-qemu is not needed to boot -kernel).
    '-device', 'virtio-net-pci,netdev=net0,romfile=',
  ];

  const started = Date.now();
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let consoleText = '';
  let stderr = '';
  let partial = '';
  const markers: string[] = [];
  let initAt: number | null = null;
  let doneAt: number | null = null;
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    consoleText += chunk;
    partial += chunk;
    const lines = partial.split(/\r?\n/);
    partial = lines.pop() ?? '';
    for (const raw of lines) {
      const line = raw.replace(/\r/g, '');
      const at = line.indexOf(MARKER);
      if (at < 0) continue;
      const m = line.slice(at + MARKER.length);
      markers.push(m);
      if (m.startsWith('init ') && initAt === null) initAt = Date.now();
      if (m.startsWith('done ')) doneAt = Date.now();
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));

  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    if (child.pid !== undefined) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }, timeoutMs);
  const [exitCode, signal] = await new Promise<[number | null, string | null]>((resolve, reject) => {
    child.once('error', (err) => {
      clearTimeout(timer);
      running.delete(child);
      reject(err);
    });
    child.once('close', (code, sig) => {
      clearTimeout(timer);
      running.delete(child);
      resolve([code, sig]);
    });
  });
  await fsp.rm(initrd, { force: true });

  const sums = new Map<string, string>();
  for (const m of markers) {
    // "sum HASH  /mnt/data/files/NAME" (sha256sum's output)
    const s = /^sum ([0-9a-f]{64})\s+\S*\/([^/\s]+)$/.exec(m);
    if (s) sums.set(s[2]!, s[1]!);
  }
  // The step that reported failure or, when the guest hung and was killed,
  // the last step that began.
  const failed = markers.map((m) => /^step (\S+) failed/.exec(m)).find((x) => x !== null);
  const lastBegun = markers.map((m) => /^step (\S+) begin/.exec(m)).filter((x) => x !== null).pop();
  const ok = !timedOut && markers.includes('done ok');
  return {
    ok,
    timedOut,
    exitCode,
    signal,
    console: stderr === '' ? consoleText : `${consoleText}\n[qemu stderr]\n${stderr}`,
    markers,
    sums,
    bootMs: initAt === null ? null : initAt - started,
    scenarioMs: initAt === null || doneAt === null ? null : doneAt - initAt,
    totalMs: Date.now() - started,
    failedStep: failed?.[1] ?? (ok ? null : (lastBegun?.[1] ?? null)),
  };
}

/** A failed boot, explained for an assertion message. */
export function explainGuest(r: GuestRun): string {
  const tail = r.console.length > 6000 ? `...${r.console.slice(-6000)}` : r.console;
  return [
    `guest ${r.ok ? 'ok' : 'failed'}${r.failedStep ? ` at step ${r.failedStep}` : ''}${r.timedOut ? ' (timed out, qemu killed)' : ''}`,
    `qemu exit: ${r.exitCode}${r.signal ? ` signal ${r.signal}` : ''}`,
    `console:\n${tail}`,
  ].join('\n');
}
