/**
 * A linearizability checker for histories of a versioned key/value register (one register per
 * key), after Wing & Gong with Lowe's improvements and Porcupine's memoization of
 * (linearized set, state): a search over the orders in which concurrent operations could have
 * taken effect, pruning states already seen.
 *
 * Operations, as a client records them:
 * - put(value) -> ok(version) | fail (certainly not applied) | info (unknown);
 * - cas(expectedVersion, value) -> ok(version) | fail (precondition failed, or not applied) | info;
 * - get -> ok(version, value) (version 0: not found) | fail | info.
 * An `info` operation may have taken effect at any point after its invocation, or never: its
 * return is placed at infinity (so it can always be linearized last, where it changes nothing
 * anyone saw). Failed operations and reads without an answer are left out. Stale reads are
 * checked separately against their weaker promise (checkStaleReads).
 */
export type OpKind = 'put' | 'cas' | 'get';

export interface Operation {
  readonly id: number;
  readonly process: number;
  readonly key: string;
  readonly kind: OpKind;
  /** put/cas: the value written; cas: the version expected. */
  readonly value?: string;
  readonly expectedVersion?: number;
  readonly invokeMs: number;
  /** Completion time; Infinity for info. */
  readonly completeMs: number;
  readonly outcome: 'ok' | 'fail' | 'info';
  /** put/cas ok: the new version; get ok: the version read (0 = not found). */
  readonly version?: number;
  /** get ok: the value read. */
  readonly readValue?: string | null;
  /** get: answered from the manager's own state, without a read index. */
  readonly stale?: boolean;
}

interface State {
  readonly version: number;
  readonly value: string | null;
}

/** The state after `op` takes effect in `state`, or null if it cannot take effect there as observed. */
function step(state: State, op: Operation): State | null {
  switch (op.kind) {
    case 'put':
      if (op.outcome === 'ok' && op.version !== state.version + 1) return null;
      return { version: state.version + 1, value: op.value ?? null };
    case 'cas':
      if (op.outcome === 'fail') return op.expectedVersion === state.version ? null : state;
      if (op.expectedVersion !== state.version) return op.outcome === 'info' ? state : null;
      if (op.outcome === 'ok' && op.version !== state.version + 1) return null;
      return { version: state.version + 1, value: op.value ?? null };
    case 'get':
      return op.version === state.version && (op.readValue ?? null) === state.value ? state : null;
  }
}

export interface KeyVerdict {
  readonly key: string;
  readonly linearizable: boolean;
  /** The search hit its step limit: neither proven linearizable nor shown not to be. */
  readonly undecided?: boolean;
  readonly operations: number;
  /** When not linearizable: the operations of the longest prefix that could be linearized, and the ones left. */
  readonly explanation?: string;
}

interface Entry {
  readonly op: Operation;
  readonly isCall: boolean;
  /** The matching call/return entry. */
  match: Entry | null;
  prev: Entry | null;
  next: Entry | null;
}

/** Checks one key's history (fail outcomes and stale reads already removed). */
export function checkKey(key: string, ops: readonly Operation[], stepsMax = 100_000_000): KeyVerdict {
  // Events in time order; at equal times, returns before calls (an operation that returned at t
  // happened before one invoked at t).
  const events: Array<{ time: number; isCall: boolean; op: Operation }> = [];
  for (const op of ops) {
    events.push({ time: op.invokeMs, isCall: true, op });
    events.push({ time: op.completeMs, isCall: false, op });
  }
  events.sort((a, b) => a.time - b.time || (a.isCall === b.isCall ? 0 : a.isCall ? 1 : -1));
  const head: Entry = { op: ops[0]!, isCall: false, match: null, prev: null, next: null };
  let tail = head;
  const calls = new Map<number, Entry>();
  for (const event of events) {
    const entry: Entry = { op: event.op, isCall: event.isCall, match: null, prev: tail, next: null };
    tail.next = entry;
    tail = entry;
    if (event.isCall) calls.set(event.op.id, entry);
    else {
      const call = calls.get(event.op.id)!;
      call.match = entry;
      entry.match = call;
    }
  }
  const index = new Map(ops.map((op, k) => [op.id, k]));
  // The linearized set is remembered by a Zobrist hash (two random 32-bit words per operation,
  // XORed in and out in O(1)); a collision between two different sets needs 64 bits to agree.
  let seed = 0x9e3779b9;
  const next32 = (): number => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return seed >>> 0;
  };
  const zobrist = ops.map(() => [next32(), next32()] as const);
  let hashLow = 0;
  let hashHigh = 0;
  const toggle = (op: Operation): void => {
    const [low, high] = zobrist[index.get(op.id)!]!;
    hashLow = (hashLow ^ low) >>> 0;
    hashHigh = (hashHigh ^ high) >>> 0;
  };
  const seen = new Set<string>();
  const stack: Array<{ entry: Entry; state: State }> = [];
  let state: State = { version: 0, value: null };
  let entry = head.next;
  let best = 0;
  let bestOrder: Operation[] = [];
  const lift = (call: Entry): void => {
    call.prev!.next = call.next;
    if (call.next !== null) call.next.prev = call.prev;
    const ret = call.match!;
    ret.prev!.next = ret.next;
    if (ret.next !== null) ret.next.prev = ret.prev;
  };
  const unlift = (call: Entry): void => {
    const ret = call.match!;
    ret.prev!.next = ret;
    if (ret.next !== null) ret.next.prev = ret;
    call.prev!.next = call;
    if (call.next !== null) call.next.prev = call;
  };
  // Operations with an unknown outcome never have to be placed: one not placed by the time every
  // known operation is has simply not taken effect (or took effect where no one could see it).
  let knownLeft = ops.filter((op) => op.outcome !== 'info').length;
  let steps = 0;
  while (head.next !== null && knownLeft > 0) {
    if (++steps > stepsMax) return { key, linearizable: false, undecided: true, operations: ops.length, explanation: `search gave up after ${stepsMax} steps (undecided)` };
    if (entry === null) throw new Error('unreachable: ran past the end of the history');
    if (entry.isCall) {
      const next = step(state, entry.op);
      // An unknown-outcome operation that would change nothing here (a CAS on another version) is
      // as good as not placed: trying it at every point only multiplies the search.
      const pointless = next !== null && entry.op.outcome === 'info' && next === state;
      if (next !== null && !pointless) {
        toggle(entry.op);
        const memo = `${next.version}|${next.value ?? '\u0000'}|${hashLow}|${hashHigh}`;
        if (!seen.has(memo)) {
          seen.add(memo);
          stack.push({ entry, state });
          state = next;
          lift(entry);
          if (entry.op.outcome !== 'info') knownLeft--;
          if (stack.length > best) {
            best = stack.length;
            bestOrder = stack.map((s) => s.entry.op);
          }
          entry = head.next;
          continue;
        }
        toggle(entry.op);
      }
      entry = entry.next;
    } else {
      // A return whose call could not be placed before it: undo the last choice.
      const top = stack.pop();
      if (top === undefined) {
        const left = ops.filter((op) => !bestOrder.includes(op));
        return {
          key,
          linearizable: false,
          operations: ops.length,
          explanation: `linearized at most ${best} of ${ops.length}: ${bestOrder.map(describe).join(' -> ')}; none of these fits next: ${left.slice(0, 6).map(describe).join(', ')}`,
        };
      }
      toggle(top.entry.op);
      state = top.state;
      unlift(top.entry);
      if (top.entry.op.outcome !== 'info') knownLeft++;
      entry = top.entry.next;
    }
  }
  return { key, linearizable: true, operations: ops.length };
}

export function describe(op: Operation): string {
  const result = op.outcome === 'info' ? 'info' : op.kind === 'get' ? `v${op.version}=${JSON.stringify(op.readValue ?? null)}` : op.outcome === 'ok' ? `v${op.version}` : 'fail';
  const args = op.kind === 'put' ? JSON.stringify(op.value) : op.kind === 'cas' ? `v${op.expectedVersion} ${JSON.stringify(op.value)}` : '';
  return `#${op.id} p${op.process} ${op.kind}(${args}) -> ${result} [${op.invokeMs}, ${op.completeMs === Infinity ? 'inf' : op.completeMs}]`;
}

export interface HistoryVerdict {
  /** True only when every key was proven linearizable and no stale read broke its promise. */
  readonly linearizable: boolean;
  readonly keys: readonly KeyVerdict[];
  readonly staleAnomalies: readonly string[];
}

/** Checks a whole history: linearizable ops per key, then stale reads against their own promise. */
export function checkHistory(ops: readonly Operation[], stepsMax?: number): HistoryVerdict {
  const byKey = new Map<string, Operation[]>();
  for (const op of ops) {
    if (op.outcome === 'fail' && op.kind !== 'cas') continue; // certainly not applied; a failed cas says the precondition did not hold
    if (op.kind === 'get' && (op.outcome !== 'ok' || op.stale === true)) continue;
    const list = byKey.get(op.key) ?? [];
    list.push(op);
    byKey.set(op.key, list);
  }
  const keys = [...byKey].map(([key, list]) => checkKey(key, list, stepsMax));
  const staleAnomalies = checkStaleReads(ops);
  return { linearizable: keys.every((k) => k.linearizable) && staleAnomalies.length === 0, keys, staleAnomalies };
}

/**
 * Stale reads promise less: the version read was written by an operation invoked before the read
 * returned (no reading from the future), carries that operation's value, and one process never
 * sees a key's version go back in its stale reads. (A process sends its stale reads to one
 * manager, a session: a manager's applied state never goes back, across restarts too, since it
 * replays up to its persisted commit index before serving.)
 */
export function checkStaleReads(ops: readonly Operation[]): string[] {
  const anomalies: string[] = [];
  const writes = new Map<string, Operation[]>();
  for (const op of ops) {
    if (op.kind === 'get') continue;
    const list = writes.get(op.key) ?? [];
    list.push(op);
    writes.set(op.key, list);
  }
  const lastSeen = new Map<string, number>();
  for (const read of [...ops].filter((op) => op.kind === 'get' && op.stale === true && op.outcome === 'ok').sort((a, b) => a.invokeMs - b.invokeMs)) {
    const version = read.version ?? 0;
    const mark = `${read.process}|${read.key}`;
    if (version < (lastSeen.get(mark) ?? 0)) anomalies.push(`${describe(read)}: version went back from v${lastSeen.get(mark)} for this process`);
    lastSeen.set(mark, Math.max(version, lastSeen.get(mark) ?? 0));
    if (version === 0) continue;
    const candidates = (writes.get(read.key) ?? []).filter((w) => w.invokeMs <= read.completeMs && w.outcome !== 'fail' && (w.outcome === 'info' || w.version === version) && w.value === read.readValue);
    if (candidates.length === 0) anomalies.push(`${describe(read)}: no write invoked before it could have produced v${version} with that value`);
  }
  return anomalies;
}
