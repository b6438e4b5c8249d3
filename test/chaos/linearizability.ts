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
  /** cas fail: the version the manager said the key was at (its refusal, CAS_MISMATCH). */
  readonly currentVersion?: number;
  /** info: when the client gave up on it (its completion stays at Infinity for the checker). */
  readonly gaveUpMs?: number;
}

/** The value an unknown-outcome write leaves when no read ever returned it (see checkKey). */
const UNREAD = '\u0001unread';

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
  // Symmetry: an unknown-outcome write whose value no read ever returned leaves a state that no
  // read can tell from another such write's (its value is never read, so it is kept as one
  // token), and two such writes of one class (any put; a cas expecting one version) that are both
  // placeable are interchangeable from then on (both return at infinity, and the known operations
  // placed are the same). So the memo counts how many of each class are placed instead of naming
  // them: with tens of unknown outcomes, naming them multiplied the states by the subsets.
  const readValues = new Set(ops.filter((op) => op.kind === 'get').map((op) => op.readValue ?? null));
  const unreadClass = new Map<number, string>();
  for (const op of ops)
    if (op.outcome === 'info' && op.kind !== 'get' && !readValues.has(op.value ?? null))
      unreadClass.set(op.id, op.kind === 'put' ? 'put' : `cas@${op.expectedVersion}`);
  const placedOfClass = new Map<string, number>();
  const classWords = new Map<string, readonly [number, number]>();
  const classWord = (cls: string, n: number): readonly [number, number] => {
    const name = `${cls}#${n}`;
    let words = classWords.get(name);
    if (words === undefined) {
      words = n === 0 ? [0, 0] : [next32(), next32()];
      classWords.set(name, words);
    }
    return words;
  };
  /** Places or removes `op` in the memo's hash: by name, or by its class's count. */
  const toggle = (op: Operation, placing: boolean): void => {
    const cls = unreadClass.get(op.id);
    let low: number;
    let high: number;
    if (cls === undefined) [low, high] = zobrist[index.get(op.id)!]!;
    else {
      const before = placedOfClass.get(cls) ?? 0;
      const after = before + (placing ? 1 : -1);
      placedOfClass.set(cls, after);
      const [l0, h0] = classWord(cls, before);
      const [l1, h1] = classWord(cls, after);
      low = l0 ^ l1;
      high = h0 ^ h1;
    }
    hashLow = (hashLow ^ low) >>> 0;
    hashHigh = (hashHigh ^ high) >>> 0;
  };
  // Versions are made once each: a version an acknowledged write made, or one a read saw with
  // another value, cannot be made by an unknown-outcome write (versions only grow, so that write
  // would have had to make another version). Trying it there only grows chains that fail later.
  const madeBy = new Map<number, string | null>();
  for (const op of ops) {
    if (op.outcome === 'ok' && op.kind !== 'get' && op.version !== undefined) madeBy.set(op.version, op.value ?? null);
    if (op.outcome === 'ok' && op.kind === 'get' && (op.version ?? 0) > 0 && !madeBy.has(op.version!))
      madeBy.set(op.version!, op.readValue ?? null);
  }
  const takenFor = (op: Operation, version: number): boolean =>
    op.outcome === 'info' && op.kind !== 'get' && madeBy.has(version) && madeBy.get(version) !== (op.value ?? null);
  /** The state `op` leaves, with an unread write's value kept as one token. */
  const stepOf = (from: State, op: Operation): State | null => {
    if (takenFor(op, from.version + 1) && step(from, op) !== from) return null;
    const next = step(from, op);
    return next !== null && next !== from && unreadClass.has(op.id) ? { version: next.version, value: UNREAD } : next;
  };
  // Known operations not yet placed that pin a version: reads of it, refused CAS expecting it.
  const readsLeftAt = new Map<number, number>();
  const refusalsLeftExpecting = new Map<number, number>();
  const count = (op: Operation, by: 1 | -1): void => {
    if (op.outcome === 'ok' && op.kind === 'get')
      readsLeftAt.set(op.version ?? 0, (readsLeftAt.get(op.version ?? 0) ?? 0) + by);
    else if (op.outcome === 'fail' && op.kind === 'cas')
      refusalsLeftExpecting.set(
        op.expectedVersion ?? 0,
        (refusalsLeftExpecting.get(op.expectedVersion ?? 0) ?? 0) + by,
      );
  };
  for (const op of ops) count(op, 1);
  const seen = new Set<string>();
  const stack: Array<{ entry: Entry; state: State; forced: boolean }> = [];
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
    if (++steps > stepsMax)
      return {
        key,
        linearizable: false,
        undecided: true,
        operations: ops.length,
        explanation: `search gave up after ${stepsMax} steps (undecided: ${seen.size} states, at most ${best} of ${ops.length} placed)`,
      };
    if (entry === null) throw new Error('unreachable: ran past the end of the history');
    if (entry.isCall) {
      const next = stepOf(state, entry.op);
      // An unknown-outcome operation that would change nothing here (a CAS on another version) is
      // as good as not placed: trying it at every point only multiplies the search.
      const pointless = next !== null && entry.op.outcome === 'info' && next === state;
      if (next !== null && !pointless) {
        toggle(entry.op, true);
        const memo = `${next.version}|${next.value ?? '\u0000'}|${hashLow}|${hashHigh}`;
        if (!seen.has(memo)) {
          seen.add(memo);
          // Some known operations are placed without loss of generality: nothing has to come
          // before them (they are reached before any return), and if nothing works after them,
          // nothing works at this level, so the search goes back past them at once:
          // - one that changes nothing here (a read of this version, a refused CAS): in any
          //   order that works, what comes ahead of it changes nothing either (versions only grow);
          // - an acknowledged write of the next version when no operation left must see this
          //   version (a read of it) or must not see the next one (a refused CAS expecting it):
          //   nothing else can make the next version, and nothing left needs to come before it.
          const known = entry.op.outcome !== 'info';
          const forced =
            known &&
            (next === state ||
              ((readsLeftAt.get(state.version) ?? 0) === 0 && (refusalsLeftExpecting.get(next.version) ?? 0) === 0));
          stack.push({ entry, state, forced });
          count(entry.op, -1);
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
        toggle(entry.op, false);
      }
      entry = entry.next;
    } else {
      // A return whose call could not be placed before it: undo the last choice (and the ones
      // placed without loss of generality, whose level has no better choice).
      let top = stack.pop();
      while (top?.forced === true) {
        toggle(top.entry.op, false);
        state = top.state;
        unlift(top.entry);
        count(top.entry.op, 1);
        knownLeft++;
        top = stack.pop();
      }
      if (top === undefined) {
        const left = ops.filter((op) => !bestOrder.includes(op));
        return {
          key,
          linearizable: false,
          operations: ops.length,
          explanation: `linearized at most ${best} of ${ops.length}: ${bestOrder.map(describe).join(' -> ')}; none of these fits next: ${left.slice(0, 6).map(describe).join(', ')}`,
        };
      }
      toggle(top.entry.op, false);
      state = top.state;
      unlift(top.entry);
      count(top.entry.op, 1);
      if (top.entry.op.outcome !== 'info') knownLeft++;
      entry = top.entry.next;
    }
  }
  return { key, linearizable: true, operations: ops.length };
}

export function describe(op: Operation): string {
  const result =
    op.outcome === 'info'
      ? 'info'
      : op.kind === 'get'
        ? `v${op.version}=${JSON.stringify(op.readValue ?? null)}`
        : op.outcome === 'ok'
          ? `v${op.version}`
          : 'fail';
  const args =
    op.kind === 'put'
      ? JSON.stringify(op.value)
      : op.kind === 'cas'
        ? `v${op.expectedVersion} ${JSON.stringify(op.value)}`
        : '';
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
  const keys = [...byKey].map(([key, list]) => checkKeyFast(key, list, stepsMax));
  const staleAnomalies = checkStaleReads(ops);
  return { linearizable: keys.every((k) => k.linearizable) && staleAnomalies.length === 0, keys, staleAnomalies };
}

/**
 * One key: the version-order checker, exact and fast; where it cannot decide (a violation that may
 * come from its choice between unknown outcomes, or a malformed history) the search of `checkKey`,
 * which may give up (undecided) but never guesses.
 */
export function checkKeyFast(key: string, ops: readonly Operation[], stepsMax?: number): KeyVerdict {
  const result = checkKeyVersions(key, ops);
  if (result.verdict !== null) return result.verdict;
  const searched = checkKey(key, ops, stepsMax);
  return searched.linearizable
    ? searched
    : {
        ...searched,
        explanation: `${searched.explanation ?? ''} (the version-order checker could not decide: ${result.reason})`,
      };
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
  for (const read of [...ops]
    .filter((op) => op.kind === 'get' && op.stale === true && op.outcome === 'ok')
    .sort((a, b) => a.invokeMs - b.invokeMs)) {
    const version = read.version ?? 0;
    const mark = `${read.process}|${read.key}`;
    if (version < (lastSeen.get(mark) ?? 0))
      anomalies.push(`${describe(read)}: version went back from v${lastSeen.get(mark)} for this process`);
    lastSeen.set(mark, Math.max(version, lastSeen.get(mark) ?? 0));
    if (version === 0) continue;
    const candidates = (writes.get(read.key) ?? []).filter(
      (w) =>
        w.invokeMs <= read.completeMs &&
        w.outcome !== 'fail' &&
        (w.outcome === 'info' || w.version === version) &&
        w.value === read.readValue,
    );
    if (candidates.length === 0)
      anomalies.push(`${describe(read)}: no write invoked before it could have produced v${version} with that value`);
  }
  return anomalies;
}

/**
 * A version-order checker for the same register: exact, and O(n log n) in the common case, where
 * the search of `checkKey` explodes with many unknown outcomes.
 *
 * Why it works. Every write that takes effect moves the key from version k-1 to k, so in any
 * linearization the applied writes W_1, W_2, ... are ordered by the versions they produce, and
 * every read of (k, value) sits between W_k and W_{k+1}. Which write is W_k is mostly observed:
 * an ok write names its version; a read of (k, value) names the write of that (unique) value.
 * Everything that contradicts that is an anomaly on its own: an ok cas whose version is not
 * expectedVersion+1; two writes claiming one version (two ok writes, or two reads of one version
 * with different values); a read of a value that no write (ok or info) wrote, of version 0 with a
 * value, of a version > 0 with none; a read that puts an ok write at another version than its
 * own, or an info write at two versions, or an info cas at a version other than
 * expectedVersion+1. The versions between 1 and the highest observed one that nothing names
 * (gaps) were made by info writes nobody saw: each info write fills at most one gap, a put any
 * gap, a cas with expected version e only gap e+1. Versions above the highest observed one are
 * never needed, except as the escape of a failed cas (below).
 *
 * With the writes fixed, real time is a system of bounds. Times become ranks: a completion at t
 * gets 2·rank(t), an invocation at t gets 2·rank(t)+1, so a return at t comes before an invoke at
 * t (as in `checkKey`), and an operation that returns at the instant it is invoked has an empty
 * interval (`checkKey` cannot place it either). A total order of the operations respects real
 * time exactly when there are points p(op) in the closed ranked intervals [inv, comp] that never
 * decrease along it (ties in any order: two operations sharing a point overlap). So the history
 * is linearizable iff there are p_1 <= p_2 <= ... (p_k the point of W_k) with
 *   lo_k <= p_k <= hi_k, lo_k = max(inv W_k, inv of every read of version k-1),
 *                        hi_k = min(comp W_k, comp of every read of version k) (info: comp = inf),
 * (a read of version k then fits at max(p_k, inv) <= min(p_{k+1}, comp)), and for every failed
 * cas F expecting e, placed where the version was not e (before W_e, or after W_{e+1}):
 *   p_e >= inv F  or  p_{e+1} <= comp F           (p_0 = -inf, cannot move; no W_{e+1}: +inf).
 * Every constraint here is closed under pointwise min, so if there is a solution there is a
 * least one, and the forward sweep finds it: p_k = max(lo_k, p_{k-1}) is forced by the chain,
 * and when a failed cas F on (e, e+1) has comp F < p_{e+1}, p_e >= inv F is forced (every
 * solution is >= the current vector, so it cannot place F after W_{e+1}). Raising p_e to
 * inv F <= comp F < p_{e+1} never pushes p_{e+1}, so a raise cascades only backwards, and each
 * failed cas fires once (per level, they are sorted by comp and taken while comp < p_{e+1}): the
 * whole sweep is linear after sorting. Lower bounds are invocations (odd ranks) and upper bounds
 * completions (even ranks), so strict and non-strict comparisons never differ: the tie rule lives
 * entirely in the ranking. Any p_k > hi_k is a proof that no order exists; if none
 * happens, the vector is a linearization (points, order, values and versions all check), so a
 * "linearizable" verdict is never wrong.
 *
 * The one search is which info write fills which gap (and which unused one is W_{m+1}, the
 * escape of failed cas expecting the top version m). Sweeping gaps in order, the choice is:
 * an info cas that fits only this gap and does not make p_k later (always as good as any
 * other: it is useless elsewhere and saves the puts); else, with only puts, the earliest
 * invoked (exchange argument: sorted assignment minimises every prefix maximum, and only
 * prefix maxima of the lower bounds matter); else, with only cas, the earliest. The real choice
 * is a cas that makes p_k later against a put that does not: the cas is taken when its invoke is
 * below every later upper bound (saving the put), else the put, and the choice is remembered. A
 * violation found after such a choice may be the choice's fault, so the sweep is run again with
 * every choice-dependent bound relaxed (gap writes bound by nothing but their version's reads,
 * any info write usable for any gap it fits, a cas expecting m+1 ignored): a violation there is
 * a proof. Otherwise the verdict is null and the caller falls back to the exact search (which
 * may give up: undecided). Values are assumed unique per write (the workload makes them so); a
 * history where they are not, or with malformed operations, also falls back.
 */
export type VersionOrderResult =
  | { readonly verdict: KeyVerdict; readonly reason?: undefined }
  | { readonly verdict: null; readonly reason: string };

interface Bound {
  value: number;
  op: Operation | null;
  /** How op sets the bound, for explanations. */
  role: string;
}

interface Violation {
  readonly explanation: string;
  /** The violation may be due to a choice between info writes (or to W_{m+1} under a cas expecting m+1). */
  readonly choiceDependent: boolean;
}

export function checkKeyVersions(key: string, ops: readonly Operation[]): VersionOrderResult {
  const anomaly = (explanation: string): VersionOrderResult => ({
    verdict: { key, linearizable: false, operations: ops.length, explanation },
  });
  const undecidable = (reason: string): VersionOrderResult => ({ verdict: null, reason });

  const times = [...new Set(ops.flatMap((op) => [op.invokeMs, op.completeMs]).filter((t) => Number.isFinite(t)))].sort(
    (a, b) => a - b,
  );
  const rank = new Map(times.map((t, k) => [t, k]));
  const ranked = new Map(
    ops.map((op) => [
      op,
      {
        inv: 2 * rank.get(op.invokeMs)! + 1,
        comp: op.completeMs === Infinity ? Infinity : 2 * rank.get(op.completeMs)!,
      },
    ]),
  );
  const inv = (op: Operation): number => ranked.get(op)!.inv;
  const comp = (op: Operation): number => ranked.get(op)!.comp;

  const writes: Operation[] = [];
  const reads: Operation[] = [];
  const fails: Operation[] = [];
  for (const op of ops) {
    if (!Number.isFinite(op.invokeMs) || Number.isNaN(op.completeMs))
      return undecidable(`malformed times: ${describe(op)}`);
    if (op.kind === 'get') {
      if (op.outcome !== 'ok') continue; // a read without an answer tells nothing
      if (!Number.isSafeInteger(op.version)) return undecidable(`a read without a version: ${describe(op)}`);
      reads.push(op);
    } else {
      if (op.kind === 'cas' && !Number.isSafeInteger(op.expectedVersion))
        return undecidable(`a cas without an expected version: ${describe(op)}`);
      if (op.outcome === 'fail') {
        if (op.kind === 'cas') fails.push(op); // a failed put certainly did not take effect
        continue;
      }
      if (op.value === undefined) return undecidable(`a write without a value: ${describe(op)}`);
      if (op.outcome === 'ok' && !Number.isSafeInteger(op.version))
        return undecidable(`an ok write without a version: ${describe(op)}`);
      writes.push(op);
    }
    if (op.outcome !== 'info' && inv(op) > comp(op))
      return anomaly(
        `${describe(op)} returned no later than it was invoked: no point of its interval can be its linearization point`,
      );
  }

  // 1. Which write made which version.
  const byValue = new Map<string, Operation>();
  for (const w of writes) {
    if (byValue.has(w.value!))
      return undecidable(`two writes of one value: ${describe(byValue.get(w.value!)!)} and ${describe(w)}`);
    byValue.set(w.value!, w);
  }
  const writerOf = new Map<number, Operation>();
  const versionOf = new Map<Operation, number>();
  /** The operation that placed a write at its version (itself when ok, else the first read of it). */
  const placedBy = new Map<Operation, Operation>();
  for (const w of writes) {
    if (w.outcome !== 'ok') continue;
    const v = w.version!;
    if (v < 1) return anomaly(`${describe(w)}: a write cannot make version ${v}`);
    if (w.kind === 'cas' && v !== w.expectedVersion! + 1)
      return anomaly(`${describe(w)}: a cas expecting v${w.expectedVersion} can only make v${w.expectedVersion! + 1}`);
    const other = writerOf.get(v);
    if (other !== undefined) return anomaly(`two writes made v${v}: ${describe(other)} and ${describe(w)}`);
    writerOf.set(v, w);
    versionOf.set(w, v);
    placedBy.set(w, w);
  }
  const failedValues = new Map(fails.map((f) => [f.value ?? '', f]));
  for (const r of reads) {
    const v = r.version!;
    const value = r.readValue ?? null;
    if (v === 0) {
      if (value !== null) return anomaly(`${describe(r)}: version 0 (not found) with a value`);
      continue;
    }
    if (v < 0) return anomaly(`${describe(r)}: no write makes a negative version`);
    if (value === null) return anomaly(`${describe(r)}: version ${v} without a value, which no write wrote`);
    const w = byValue.get(value);
    if (w === undefined) {
      const failed = failedValues.get(value);
      return anomaly(
        `${describe(r)} read a value never written${failed === undefined ? '' : ` (only by ${describe(failed)}, which failed)`}`,
      );
    }
    if (w.outcome === 'ok' && w.version !== v)
      return anomaly(`${describe(r)} read the value of ${describe(w)} at v${v}, but that write made v${w.version}`);
    if (w.kind === 'cas' && v !== w.expectedVersion! + 1)
      return anomaly(
        `${describe(r)} read the value of ${describe(w)} at v${v}, but a cas expecting v${w.expectedVersion} can only make v${w.expectedVersion! + 1}`,
      );
    const known = versionOf.get(w);
    if (known !== undefined && known !== v)
      return anomaly(
        `one write at two versions: ${describe(placedBy.get(w)!)} saw ${describe(w)} at v${known}, ${describe(r)} at v${v}`,
      );
    const other = writerOf.get(v);
    if (other !== undefined && other !== w)
      return anomaly(
        `two writes made v${v}: ${describe(other)} (seen by ${describe(placedBy.get(other)!)}) and ${describe(w)} (seen by ${describe(r)})`,
      );
    writerOf.set(v, w);
    versionOf.set(w, v);
    if (!placedBy.has(w)) placedBy.set(w, r);
  }
  const m = Math.max(0, ...writerOf.keys());

  // 2. Static bounds per version from the reads; failed cas per level (e, e+1), sorted by completion.
  const readsLo = new Map<number, Bound>(); // of version k: inv of reads of version k-1
  const readsHi = new Map<number, Bound>(); // of version k: comp of reads of version k
  for (const r of reads) {
    const v = r.version!;
    const lo = readsLo.get(v + 1);
    if (lo === undefined || inv(r) > lo.value)
      readsLo.set(v + 1, { value: inv(r), op: r, role: `it read v${v}, so v${v + 1} was written after it began` });
    const hi = readsHi.get(v);
    if (hi === undefined || comp(r) < hi.value) readsHi.set(v, { value: comp(r), op: r, role: `it read v${v}` });
  }
  const failsAt = new Map<number, Operation[]>();
  for (const f of fails) {
    const list = failsAt.get(f.expectedVersion!) ?? [];
    list.push(f);
    failsAt.set(f.expectedVersion!, list);
  }
  for (const list of failsAt.values()) list.sort((a, b) => comp(a) - comp(b));
  const unplacedPuts = writes
    .filter((w) => w.outcome === 'info' && w.kind === 'put' && !versionOf.has(w))
    .sort((a, b) => inv(a) - inv(b));
  const unplacedCas = new Map<number, Operation[]>(); // by the only version each can make
  for (const w of writes) {
    if (w.outcome !== 'info' || w.kind !== 'cas' || versionOf.has(w)) continue;
    const list = unplacedCas.get(w.expectedVersion! + 1) ?? [];
    list.push(w);
    unplacedCas.set(w.expectedVersion! + 1, list);
  }
  for (const list of unplacedCas.values()) list.sort((a, b) => inv(a) - inv(b));
  // Suffix minima of the static upper bounds: no write of version >= k can take effect after them.
  const suffixHi: number[] = new Array<number>(m + 2).fill(Infinity);
  for (let k = m; k >= 1; k--) {
    const w = writerOf.get(k);
    suffixHi[k] = Math.min(suffixHi[k + 1]!, readsHi.get(k)?.value ?? Infinity, w === undefined ? Infinity : comp(w));
  }

  const sweep = (relaxed: boolean): Violation | null => {
    let choiceMade = false;
    // The escape version m+1 for failed cas expecting m, when an unplaced info write can make it.
    const escapeCandidates = (unplacedCas.get(m + 1)?.length ?? 0) + unplacedPuts.length;
    const top = (failsAt.get(m)?.length ?? 0) > 0 && escapeCandidates > 0 ? m + 1 : m;
    const higherFails = top === m + 1 && (failsAt.get(m + 1)?.length ?? 0) > 0;
    const p: number[] = new Array<number>(top + 2).fill(-Infinity);
    const lowWhy: Bound[] = new Array<Bound>(top + 2);
    const hiAt: Bound[] = new Array<Bound>(top + 2);
    const writer: Array<Operation | null> = new Array<Operation | null>(top + 2).fill(null);
    hiAt[0] = { value: -Infinity, op: null, role: 'nothing was written yet' };
    const ptr = new Map<number, number>();
    let nextPut = 0;
    const violationAt = (k: number): Violation => {
      const low = lowWhy[k]!;
      const high = hiAt[k]!;
      const w = writer[k] ?? null;
      const tail = relaxed ? '; even with every choice between unknown outcomes relaxed' : '';
      if (k === 0) {
        const next = lowWhy[1];
        const why =
          next === undefined || next.op === null
            ? 'no write can have made v1'
            : `v1 was written at or after the invocation of ${describe(next.op)} (${next.role}), after it returned`;
        return {
          choiceDependent: choiceMade || (higherFails && !relaxed),
          explanation: `no linearization: ${low.op === null ? '?' : describe(low.op)} failed expecting v0, so v1 came before it, yet ${why}${tail}`,
        };
      }
      return {
        choiceDependent: choiceMade || (higherFails && !relaxed),
        explanation: `no linearization: the write of v${k}${w === null ? ' (an unobserved info write)' : ` ${describe(w)}`} would have to take effect at or after the invocation of ${low.op === null ? '?' : describe(low.op)} (${low.role}) yet no later than the return of ${high.op === null ? '?' : describe(high.op)} (${high.role})${tail}`,
      };
    };
    // Failed cas on (e, e+1) whose completion is before p_{e+1} must be placed before W_e: raise p_e, cascading down.
    const settle = (from: number): Violation | null => {
      for (let e = from; e >= 0; e--) {
        const list = e === m + 1 && relaxed ? undefined : failsAt.get(e);
        if (list === undefined) return null;
        let i = ptr.get(e) ?? 0;
        let raised = false;
        const ceiling = e + 1 > top ? Infinity : p[e + 1]!;
        while (i < list.length && comp(list[i]!) < ceiling) {
          const f = list[i++]!;
          if (inv(f) > p[e]!) {
            p[e] = inv(f);
            lowWhy[e] = {
              value: inv(f),
              op: f,
              role: `a cas expecting v${e} that failed, and v${e + 1} cannot have come before it returned, so v${e} came after it began`,
            };
            raised = true;
          }
        }
        ptr.set(e, i);
        if (p[e]! > hiAt[e]!.value) return violationAt(e);
        if (!raised) return null;
      }
      return null;
    };
    for (let k = 1; k <= top; k++) {
      const fromReads = readsLo.get(k);
      let low: Bound = lowWhy[k - 1] ?? { value: -Infinity, op: null, role: '' };
      if (fromReads !== undefined && fromReads.value > p[k - 1]!) low = fromReads;
      let high: Bound = readsHi.get(k) ?? { value: Infinity, op: null, role: '' };
      let w = writerOf.get(k) ?? null;
      if (w === null) {
        // A gap (or the escape version m+1): an unobserved info write made it.
        const cas = unplacedCas.get(k)?.[0];
        const put = relaxed ? unplacedPuts[0] : unplacedPuts[nextPut];
        if (cas === undefined && put === undefined) {
          if (k === m + 1) {
            // No write left for the escape: failed cas expecting m must come before W_m.
            p[k] = Infinity;
            return settle(m);
          }
          return {
            choiceDependent: choiceMade,
            explanation: `no linearization: nothing names the write of v${k} (below v${m}, which was observed), and no unknown-outcome write ${relaxed ? 'exists' : 'is left'} that could have made it`,
          };
        }
        if (relaxed) w = null;
        else if (put === undefined || (cas !== undefined && inv(cas) <= low.value)) w = cas!;
        else if (cas === undefined) w = put;
        else if (k === m + 1) w = inv(cas) <= inv(put) ? cas : put;
        else {
          // A cas that makes p_k later against a put that may be needed later: a real choice.
          choiceMade = true;
          w = inv(cas) <= suffixHi[k]! ? cas : put;
        }
        if (w !== null && w === put) nextPut++;
      } else if (comp(w) < high.value) high = { value: comp(w), op: w, role: `it wrote v${k}` };
      if (w !== null && !(relaxed && !versionOf.has(w)) && inv(w) > low.value)
        low = { value: inv(w), op: w, role: `it wrote v${k}` };
      writer[k] = w;
      p[k] = Math.max(p[k - 1]!, low.value);
      lowWhy[k] = low;
      hiAt[k] = high;
      if (p[k]! > high.value) return violationAt(k);
      const broken = settle(k - 1);
      if (broken !== null) return broken;
    }
    return settle(top);
  };

  const first = sweep(false);
  if (first === null) return { verdict: { key, linearizable: true, operations: ops.length } };
  if (!first.choiceDependent) return anomaly(first.explanation);
  const relaxedRun = sweep(true);
  if (relaxedRun !== null) return anomaly(relaxedRun.explanation);
  return undecidable(`a violation that may be due to a choice between unknown outcomes: ${first.explanation}`);
}
