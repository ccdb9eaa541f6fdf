/**
 * The participant's side of a two-phase change (promotion): while a node has
 * said yes to one initiator, it says "busy" to every other and does not
 * promote itself. The lock ends with the initiator's commit or abort, with
 * the loss of its session, or after `twopc-timeout` — an initiator that
 * vanished between the phases must not block the cluster for good.
 */
export interface TwopcHold {
  fromNodeId: number;
  txId: number;
}

export class TwopcLock {
  private held: (TwopcHold & { timer: NodeJS.Timeout }) | null = null;

  constructor(
    private readonly timeoutMs: number,
    private readonly expired: (h: TwopcHold) => void = () => undefined,
  ) {}

  holder(): TwopcHold | null {
    return this.held ? { fromNodeId: this.held.fromNodeId, txId: this.held.txId } : null;
  }

  /** Take the lock for this change; false when another change holds it. */
  take(fromNodeId: number, txId: number): boolean {
    if (this.held) return this.held.fromNodeId === fromNodeId && this.held.txId === txId;
    const timer = setTimeout(() => {
      const h = this.held;
      this.held = null;
      if (h) this.expired({ fromNodeId: h.fromNodeId, txId: h.txId });
    }, this.timeoutMs);
    timer.unref();
    this.held = { fromNodeId, txId, timer };
    return true;
  }

  /** Release when held by this initiator (for this change, or any when txId is null). */
  release(fromNodeId: number, txId: number | null): boolean {
    const h = this.held;
    if (!h || h.fromNodeId !== fromNodeId || (txId !== null && h.txId !== txId)) return false;
    clearTimeout(h.timer);
    this.held = null;
    return true;
  }

  clear(): void {
    if (this.held) clearTimeout(this.held.timer);
    this.held = null;
  }
}
