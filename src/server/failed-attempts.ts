// Failed joins and logins, counted per source address.

/** Failed join attempts a source address may make within JOIN_FAILURE_WINDOW_MS before it is refused outright. */
export const JOIN_FAILURES_PER_SOURCE_MAX = 5;
export const JOIN_FAILURE_WINDOW_MS = 60_000;
/** Sources whose failures are remembered (oldest forgotten first): a bound on memory, not on attackers. */
const JOIN_SOURCES_TRACKED_MAX = 4096;
/**
 * Failed attempts per source address (joins, logins), so a token or a password cannot be guessed
 * at network speed. Local to each manager (joins go to the leader anyway); counted in a sliding
 * window.
 */
export class FailedAttempts {
  readonly #failures = new Map<string, number[]>();
  readonly #nowMs: () => number;
  readonly #what: string;
  readonly #max: number;

  /** `what` names the attempts in the refusal ("joins", "logins"); `max` failures a minute are allowed. */
  constructor(nowMs: () => number = Date.now, what = 'joins', max = JOIN_FAILURES_PER_SOURCE_MAX) {
    this.#nowMs = nowMs;
    this.#what = what;
    this.#max = max;
  }

  /** Null if `source` may try; else how long it must wait, in a message. */
  refusal(source: string): string | null {
    const recent = this.#recent(source);
    if (recent.length < this.#max) return null;
    const waitS = Math.ceil((recent[0]! + JOIN_FAILURE_WINDOW_MS - this.#nowMs()) / 1000);
    return `too many failed ${this.#what} from ${source}: ${this.#max} in ${JOIN_FAILURE_WINDOW_MS / 1000} s; try again in ${waitS} s`;
  }

  failed(source: string): void {
    const recent = this.#recent(source);
    this.#failures.delete(source);
    if (this.#failures.size >= JOIN_SOURCES_TRACKED_MAX) this.#failures.delete(this.#failures.keys().next().value!);
    this.#failures.set(source, [...recent, this.#nowMs()]);
  }

  #recent(source: string): number[] {
    const since = this.#nowMs() - JOIN_FAILURE_WINDOW_MS;
    return (this.#failures.get(source) ?? []).filter((t) => t > since);
  }
}

/** The host part of grpc-js's peer string ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000"). */
export function sourceHost(peer: string): string {
  const withoutScheme = peer.replace(/^(ipv4|ipv6|unix):/, '');
  const at = withoutScheme.lastIndexOf(':');
  return (at > 0 ? withoutScheme.slice(0, at) : withoutScheme).replace(/^\[|\]$/g, '').slice(0, 64);
}
