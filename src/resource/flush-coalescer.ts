/**
 * Many clients flushing at once need one fdatasync each only in the worst
 * case. A flush requested while another runs cannot ride on it (that one may
 * have started before the caller's writes completed), but every caller that
 * arrives during the same running flush can share the one that starts next.
 */
export class FlushCoalescer {
  private running: Promise<void> | null = null;
  private queued: Promise<void> | null = null;

  constructor(private readonly doFlush: () => Promise<void>) {}

  flush(): Promise<void> {
    if (this.running === null) return this.start();
    if (this.queued === null) {
      const after = this.running;
      this.queued = after.then(
        () => this.startQueued(),
        () => this.startQueued(),
      );
    }
    return this.queued;
  }

  private startQueued(): Promise<void> {
    this.queued = null;
    return this.start();
  }

  private start(): Promise<void> {
    const p = this.doFlush();
    this.running = p;
    const clear = (): void => {
      if (this.running === p) this.running = null;
    };
    p.then(clear, clear);
    return p;
  }
}
