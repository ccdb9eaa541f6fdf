/**
 * The server the interop suite drives: a single mirrorbd node, Primary,
 * started through its CLI by the shared helper. MIRRORBD_INTEROP_SERVER=nbdkit
 * runs the same checks against nbdkit instead, as a reference.
 */
export interface StartedNode {
  dir: string;
  configFile: string;
  diskPath: string;
  resource: string;
  node: string;
  host: string;
  port: number;
  /** nbd://127.0.0.1:PORT/r0 */
  uri: string;
  /** Exported size in bytes. */
  sizeBytes: number;
  cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }>;
  stop(): Promise<void>;
}

export interface StartOptions {
  sizeBytes?: number;
  nbdSection?: string;
}

export const reference = process.env.MIRRORBD_INTEROP_SERVER === 'nbdkit';

export async function startNode(opts: StartOptions = {}): Promise<StartedNode> {
  if (reference) {
    const { startNbdkitNode } = await import('./nbdkit-node.js');
    return startNbdkitNode(opts);
  }
  const { startPrimary } = await import('../helpers/single-node.js');
  return startPrimary(opts);
}
