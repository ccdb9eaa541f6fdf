/**
 * I/O held back on a Primary (on-no-quorum suspend-io): new requests wait
 * here until every reason to suspend is gone. Requests already past the
 * gate finish as usual. Each reason is named, so status can say why.
 */
export class IoSuspension {
  private readonly reasons = new Set<string>();
  private released: Promise<void> | null = null;
  private release: (() => void) | null = null;

  suspend(reason: string): void {
    this.reasons.add(reason);
    if (!this.released) this.released = new Promise((resolve) => (this.release = resolve));
  }

  resume(reason: string): void {
    this.reasons.delete(reason);
    if (this.reasons.size > 0 || !this.release) return;
    const r = this.release;
    this.release = null;
    this.released = null;
    r();
  }

  /** Null while I/O may go on; else a promise that settles when it may. */
  wait(): Promise<void> | null {
    return this.released;
  }

  why(): string[] {
    return [...this.reasons];
  }
}
