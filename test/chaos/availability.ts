/**
 * Availability per fault, from a history: for each fault, the longest stretch with no
 * acknowledged write, and the longest with no acknowledged linearizable read, from the fault's
 * start until the first acknowledgement after it was healed (a stretch still open at the end of
 * the run counts to the end). Gathered per nemesis kind as median and max, against the goals.
 */
import type { Operation } from './linearizability.ts';
import type { FaultRecord, NemesisName } from './nemesis.ts';

export interface FaultAvailability {
  readonly fault: FaultRecord;
  /** The longest stretch without an acknowledged write (put or cas answered ok), ms. */
  readonly writeGapMs: number;
  /** The longest stretch without an acknowledged linearizable read, ms. */
  readonly readGapMs: number;
}

export interface KindAvailability {
  readonly nemesis: NemesisName;
  readonly faults: number;
  readonly writeGapMs: { readonly median: number; readonly max: number };
  readonly readGapMs: { readonly median: number; readonly max: number };
  /** The goal for this kind, ms (issue 20), or null where none is set. */
  readonly goalMs: number | null;
  readonly met: boolean | null;
}

/** Goals: a leader kill, a pause and a partition under 1 s; a restart of every manager under 5 s. */
export const AVAILABILITY_GOALS_MS: Partial<Record<NemesisName, number>> = {
  'kill-leader': 1000,
  pause: 1000,
  partition: 1000,
  'restart-all': 5000,
};

/** The longest gap between acknowledgements from `fromMs` until the first after `healedMs` (or `runEndMs`). */
export function longestGapMs(acks: readonly number[], fromMs: number, healedMs: number, runEndMs: number): number {
  let last = fromMs;
  let longest = 0;
  for (const at of acks) {
    if (at <= fromMs) continue;
    longest = Math.max(longest, at - last);
    last = at;
    if (at >= healedMs) return longest;
  }
  return Math.max(longest, runEndMs - last);
}

export function availability(
  history: readonly Operation[],
  faults: readonly FaultRecord[],
  runEndMs: number,
): { perFault: FaultAvailability[]; perKind: KindAvailability[] } {
  const acked = (pick: (op: Operation) => boolean): number[] =>
    history
      .filter((op) => op.outcome === 'ok' && Number.isFinite(op.completeMs) && pick(op))
      .map((op) => op.completeMs)
      .sort((a, b) => a - b);
  const writes = acked((op) => op.kind !== 'get');
  const reads = acked((op) => op.kind === 'get' && op.stale !== true);
  const perFault = faults.map((fault) => ({
    fault,
    writeGapMs: longestGapMs(writes, fault.atMs, fault.endMs, runEndMs),
    readGapMs: longestGapMs(reads, fault.atMs, fault.endMs, runEndMs),
  }));
  const kinds = [...new Set(faults.map((f) => f.nemesis))];
  const perKind = kinds.map((nemesis): KindAvailability => {
    const mine = perFault.filter((f) => f.fault.nemesis === nemesis);
    const summary = (xs: number[]) => {
      const sorted = [...xs].sort((a, b) => a - b);
      return { median: sorted[(sorted.length - 1) >> 1]!, max: sorted[sorted.length - 1]! };
    };
    const writeGapMs = summary(mine.map((f) => f.writeGapMs));
    const readGapMs = summary(mine.map((f) => f.readGapMs));
    const goalMs = AVAILABILITY_GOALS_MS[nemesis] ?? null;
    return {
      nemesis,
      faults: mine.length,
      writeGapMs,
      readGapMs,
      goalMs,
      met: goalMs === null ? null : Math.max(writeGapMs.max, readGapMs.max) < goalMs,
    };
  });
  return { perFault, perKind };
}

export function formatAvailability(perKind: readonly KindAvailability[]): string[] {
  const ms = (x: number) => (Number.isFinite(x) ? `${Math.round(x)}` : '-');
  const lines = ['availability per fault: the longest stretch without an acknowledged write / linearizable read, ms'];
  lines.push('  nemesis          faults  writes median  max  reads median  max  goal');
  for (const k of perKind)
    lines.push(
      `  ${k.nemesis.padEnd(16)} ${String(k.faults).padStart(6)}  ${ms(k.writeGapMs.median).padStart(13)}  ${ms(k.writeGapMs.max).padStart(3)}  ${ms(k.readGapMs.median).padStart(12)}  ${ms(k.readGapMs.max).padStart(3)}  ${k.goalMs === null ? '' : `< ${k.goalMs} ${k.met ? 'met' : 'NOT met'}`}`,
    );
  return lines;
}
