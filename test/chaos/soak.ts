/**
 * A soak: chaos runs back to back, seed after seed, until the minutes asked for are done, with a
 * ledger line per run in chaos-results/ledger.jsonl (appended, so soaks add up across days) and
 * every run's history kept beside it, pass or fail, for anyone to check again.
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { formatSummary, runChaos, type NemesisName } from './run.ts';

export interface SoakOptions {
  readonly minutes: number;
  readonly firstSeed: number;
  readonly managers: number;
  readonly durationS: number;
  readonly nemeses: readonly NemesisName[];
  readonly clients: number;
  readonly network: 'auto' | 'loopback' | 'netns';
  readonly compiled: boolean;
  /** Where the ledger and the histories go (default chaos-results/ in the working directory). */
  readonly resultsDir?: string;
}

export interface LedgerLine {
  readonly finishedAt: string;
  readonly seed: number;
  readonly managers: number;
  readonly minutes: number;
  readonly operations: { readonly ok: number; readonly fail: number; readonly info: number };
  readonly faults: number;
  readonly anomalies: number;
  readonly undecidedKeys: number;
  readonly lostWrites: number;
  /** TTLs served late or gone early (expiry.ts), and what checks during faults found wrong. */
  readonly expiryProblems: number;
  readonly faultProblems: number;
  readonly converged: boolean;
  readonly ok: boolean;
  readonly availability: ReadonlyArray<{ nemesis: string; writeGapMaxMs: number; readGapMaxMs: number }>;
  readonly history: string | null;
}

/** Runs the soak; true if every run passed. */
export async function soak(options: SoakOptions): Promise<boolean> {
  const results = options.resultsDir ?? join(process.cwd(), 'chaos-results');
  const dir = join(results, `soak-${new Date().toISOString().replace(/[:.]/g, '-')}`);
  mkdirSync(dir, { recursive: true });
  const ledger = join(results, 'ledger.jsonl');
  const started = performance.now();
  let allOk = true;
  let runs = 0;
  for (let seed = options.firstSeed; (performance.now() - started) / 60_000 < options.minutes; seed++) {
    const runStarted = performance.now();
    const summary = await runChaos({
      managers: options.managers,
      durationS: options.durationS,
      nemeses: options.nemeses,
      seed,
      clients: options.clients,
      network: options.network,
      compiled: options.compiled,
      historyFile: join(dir, `history-seed-${seed}.jsonl`),
      log: (line) => console.log(line),
    });
    runs++;
    console.log(formatSummary(summary));
    const line: LedgerLine = {
      finishedAt: new Date().toISOString(),
      seed,
      managers: options.managers,
      minutes: Number(((performance.now() - runStarted) / 60_000).toFixed(2)),
      operations: summary.operations,
      faults: summary.faults.length,
      anomalies:
        summary.verdict.keys.filter((k) => !k.linearizable && k.undecided !== true).length +
        summary.verdict.staleAnomalies.length,
      undecidedKeys: summary.verdict.keys.filter((k) => k.undecided === true).length,
      lostWrites: summary.lostWrites.length,
      expiryProblems: summary.expiry.problems.length,
      faultProblems: summary.faults.reduce((n, f) => n + (f.problems?.length ?? 0), 0),
      converged: summary.converged,
      ok: summary.ok,
      availability: summary.availability.map((k) => ({
        nemesis: k.nemesis,
        writeGapMaxMs: Math.round(k.writeGapMs.max),
        readGapMaxMs: Math.round(k.readGapMs.max),
      })),
      history: summary.historyFile,
    };
    appendFileSync(ledger, `${JSON.stringify(line)}\n`);
    allOk &&= summary.ok;
  }
  const minutes = (performance.now() - started) / 60_000;
  console.log(
    `soak: ${runs} runs, ${minutes.toFixed(1)} minutes, ${allOk ? 'every run passed' : 'ANOMALY in a run (see the ledger)'}; ledger ${ledger}`,
  );
  return allOk;
}
