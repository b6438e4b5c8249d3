/**
 * Expiry probes: secrets written with a time to live, then read from every manager, to check that
 * TTLs hold whatever a manager's wall clock says (the clock-skew nemesis). The keys are their own
 * (chaos/ttl/N, each written once), apart from the keys the linearizability checker sees, since
 * an expiry makes a value vanish without a write.
 *
 * The promise checked, with `slackMs` for the housekeeping that sweeps expired versions and for
 * the time a request takes:
 * - never served late: no read invoked later than ttl after the put was acknowledged returns
 *   the value (real time, the harness's clock);
 * - never gone early: no linearizable read invoked after the put was acknowledged, and answered
 *   sooner than ttl after the put was invoked, finds the key missing.
 */
import { status as grpcStatus } from '@grpc/grpc-js';
import { ClientError } from '../../src/client/client.ts';
import type { CofferClient } from '../../src/client/client.ts';
import type { Random } from '../../src/util/prng.ts';

export interface ExpiryProbe {
  readonly kind: 'put' | 'get';
  readonly key: string;
  /** put: the value written; get: the value read, or null when the key was not found. */
  readonly value: string | null;
  /** put: the time to live asked for, ms. */
  readonly ttlMs?: number;
  readonly stale?: boolean;
  /** Which manager answered (its name). */
  readonly manager: string;
  readonly invokeMs: number;
  readonly completeMs: number;
}

/** Housekeeping sweeps every 250 ms; a request and its apply take some more. */
export const EXPIRY_SLACK_MS = 750;
const TTL_SECONDS = 2;
const RECENT_KEYS = 12;

/** One client loop of expiry probes until `running()` turns false. */
export async function probeExpiry(options: {
  readonly clients: readonly { readonly name: string; readonly client: CofferClient }[];
  readonly random: Random;
  readonly now: () => number;
  readonly running: () => boolean;
  readonly probes: ExpiryProbe[];
}): Promise<void> {
  const { clients, random, now, probes } = options;
  const written: { key: string; value: string }[] = [];
  let n = 0;
  while (options.running()) {
    const { name, client } = clients[random.int(clients.length)]!;
    const invokeMs = now();
    try {
      if (written.length === 0 || random.float() < 0.25) {
        const key = `chaos/ttl/${n}`;
        const value = `ttl-${n++}`;
        await client.put(key, Buffer.from(value), { ttlSeconds: TTL_SECONDS });
        written.push({ key, value });
        probes.push({
          kind: 'put',
          key,
          value,
          ttlMs: TTL_SECONDS * 1000,
          manager: name,
          invokeMs,
          completeMs: now(),
        });
      } else {
        const { key } = written[written.length - 1 - random.int(Math.min(RECENT_KEYS, written.length))]!;
        const stale = random.float() < 0.3;
        const read = await client.get(key, { stale }).then(
          (reply) => reply.value.toString(),
          (error: unknown) => {
            if (error instanceof ClientError && error.code === grpcStatus.NOT_FOUND) return null;
            throw error;
          },
        );
        probes.push({ kind: 'get', key, value: read, stale, manager: name, invokeMs, completeMs: now() });
      }
    } catch {
      // A probe without an answer tells nothing (a put that may have applied is never read as
      // written: its key is not in `written`, so reads never ask for it).
    }
    await new Promise((resolve) => setTimeout(resolve, 40 + random.int(80)));
  }
}

/** What broke the promise, one line each (empty: kept). */
export function checkExpiry(probes: readonly ExpiryProbe[], slackMs = EXPIRY_SLACK_MS): string[] {
  const puts = new Map(probes.filter((p) => p.kind === 'put').map((p) => [p.key, p]));
  const problems: string[] = [];
  for (const read of probes) {
    if (read.kind !== 'get') continue;
    const put = puts.get(read.key);
    if (put === undefined || read.invokeMs < put.completeMs) continue;
    const ttlMs = put.ttlMs ?? 0;
    const at = `read of ${read.key} at ${read.manager}${read.stale === true ? ' (stale)' : ''}`;
    if (read.value !== null && read.invokeMs > put.completeMs + ttlMs + slackMs)
      problems.push(
        `served late: ${at} invoked ${Math.round(read.invokeMs - put.completeMs)} ms after the put (ttl ${ttlMs} ms, written at ${put.manager}) returned the value`,
      );
    if (read.value === null && read.stale !== true && read.completeMs < put.invokeMs + ttlMs - slackMs)
      problems.push(
        `gone early: ${at} answered ${Math.round(read.completeMs - put.invokeMs)} ms after the put (ttl ${ttlMs} ms, written at ${put.manager}) found nothing`,
      );
  }
  return problems;
}
