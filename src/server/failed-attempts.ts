import { isIP } from 'node:net';
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
    return `too many failed ${this.#what}${this.#what.endsWith(' of') ? ' ' : ' from '}${source}: ${this.#max} in ${JOIN_FAILURE_WINDOW_MS / 1000} s; try again in ${waitS} s`;
  }

  failed(source: string): void {
    const recent = this.#recent(source);
    this.#failures.delete(source);
    if (this.#failures.size >= JOIN_SOURCES_TRACKED_MAX) this.#failures.delete(this.#failures.keys().next().value!);
    this.#failures.set(source, [...recent, this.#nowMs()]);
  }

  /**
   * An attempt whose outcome is not known yet counts as a failure from now (so many sent at once
   * cannot all pass the check before any has failed); the returned function takes it back once it
   * succeeded.
   */
  attempt(source: string): () => void {
    this.failed(source);
    const at = this.#failures.get(source)!.at(-1)!;
    return () => {
      const times = this.#failures.get(source);
      const index = times?.lastIndexOf(at) ?? -1;
      if (index >= 0) times!.splice(index, 1);
    };
  }

  #recent(source: string): number[] {
    const since = this.#nowMs() - JOIN_FAILURE_WINDOW_MS;
    return (this.#failures.get(source) ?? []).filter((t) => t > since);
  }
}

/**
 * The source an attempt is counted against, from grpc-js's peer string ("ipv4:127.0.0.1:5000",
 * "ipv6:[2001:db8::1]:5000"): an IPv4 address, or an IPv6 address's /64 (one host usually holds
 * a whole /64, so counting each address would let it try without limit).
 */
export function sourceHost(peer: string): string {
  const withoutScheme = peer.replace(/^(ipv4|ipv6|unix):/, '');
  const at = withoutScheme.lastIndexOf(':');
  const host = (at > 0 ? withoutScheme.slice(0, at) : withoutScheme).replace(/^\[|\]$/g, '').slice(0, 64);
  if (isIP(host) !== 6 || host.includes('.')) return host;
  const [head = '', tail = ''] = host.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = tail === '' ? [] : tail.split(':');
  const groups = host.includes('::') ? [...left, ...Array(8 - left.length - right.length).fill('0'), ...right] : left;
  return `${groups
    .slice(0, 4)
    .map((g) => g.replace(/^0+(?=.)/, ''))
    .join(':')}::/64`;
}
