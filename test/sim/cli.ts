/**
 * npm run sim -- [--seeds N] [--seed S] [--nodes 3|5] [--ticks T] [--jobs J] [--state applied|hash] [--trace]
 *
 * Runs N seeds (from S, default 1) of the simulator, spread over J processes (default: cores),
 * alternating 3 and 5 nodes unless --nodes is given. Exits non-zero on any violation, printing
 * the seed, the property and the command that replays it. `--seed S` alone replays one seed;
 * with --trace it prints every event of the run. `--state applied` (the default): each node
 * applies through a real AppliedState over a state store that loses its unsynced tail at a crash;
 * `--state hash`: the hash chain alone (faster; the Raft properties only).
 */
import { availableParallelism } from 'node:os';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { emptySimStats, runSimulation, type SimResult } from './simulation.ts';

const { values } = parseArgs({
  options: {
    seeds: { type: 'string' },
    seed: { type: 'string' },
    nodes: { type: 'string' },
    ticks: { type: 'string' },
    jobs: { type: 'string' },
    trace: { type: 'boolean', default: false },
    state: { type: 'string', default: 'applied' },
    'stop-at-first': { type: 'boolean', default: false },
    worker: { type: 'boolean', default: false },
  },
  strict: true,
});

function int(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 0) {
    console.error(`--${name} must be a non-negative integer: got ${text}`);
    process.exit(2);
  }
  return value;
}

const first = int('seed', values.seed, 1);
const count = int('seeds', values.seeds, values.seed === undefined ? 100 : 1);
const fixedNodes = values.nodes === undefined ? null : int('nodes', values.nodes, 3);
const ticks = int('ticks', values.ticks, 600);
const jobs = Math.max(1, Math.min(int('jobs', values.jobs, availableParallelism()), count));
if (values.state !== 'applied' && values.state !== 'hash') {
  console.error(`--state must be applied or hash: got ${values.state}`);
  process.exit(2);
}
const appliedState = values.state === 'applied';

function nodesFor(seed: number): number {
  return fixedNodes ?? (seed % 2 === 0 ? 5 : 3);
}

export function replayCommand(result: Pick<SimResult, 'seed' | 'nodes'>, ticksUsed = ticks): string {
  return `npm run sim -- --seed ${result.seed} --nodes ${result.nodes}${ticksUsed === 600 ? '' : ` --ticks ${ticksUsed}`}${appliedState ? '' : ' --state hash'} --trace`;
}

async function runRange(from: number, n: number, report: (r: SimResult) => void): Promise<void> {
  for (let seed = from; seed < from + n; seed++) {
    const result = await runSimulation({
      seed,
      nodes: nodesFor(seed),
      chaosTicks: ticks,
      trace: values.trace,
      appliedState,
    });
    report(result);
    if (!result.ok && values['stop-at-first']) return;
  }
}

if (values.worker) {
  // Child process: run the range, one JSON line per seed.
  await runRange(first, count, (r) => process.send!({ ...r, trace: undefined }));
  process.exit(0);
}

const started = Date.now();
const failures: SimResult[] = [];
let done = 0;
const totals = emptySimStats();

function onResult(result: SimResult): void {
  done++;
  for (const key of Object.keys(totals) as (keyof typeof totals)[])
    totals[key] = key === 'highestTerm' ? Math.max(totals[key], result.stats[key]) : totals[key] + result.stats[key];
  if (!result.ok) {
    failures.push(result);
    console.error(`FAIL seed ${result.seed} (${result.nodes} nodes): ${result.property}: ${result.message}`);
    console.error(`  replay: ${replayCommand(result)}`);
  }
  if (values.trace && result.trace) for (const line of result.trace) console.log(line);
  if (count >= 1000 && done % 1000 === 0)
    console.log(`${done}/${count} seeds, ${failures.length} failed, ${((Date.now() - started) / 1000).toFixed(0)} s`);
}

if (jobs === 1) {
  await runRange(first, count, onResult);
  finish(values['stop-at-first'] && failures.length > 0);
} else {
  const per = Math.ceil(count / jobs);
  let running = 0;
  const script = fileURLToPath(import.meta.url);
  for (let k = 0; k < jobs; k++) {
    const from = first + k * per;
    const n = Math.min(per, first + count - from);
    if (n <= 0) continue;
    running++;
    const child = fork(
      script,
      [
        '--worker',
        '--seed',
        String(from),
        '--seeds',
        String(n),
        '--ticks',
        String(ticks),
        '--state',
        values.state,
        ...(fixedNodes === null ? [] : ['--nodes', String(fixedNodes)]),
      ],
      {
        execArgv: ['--import', 'tsx'],
      },
    );
    child.on('message', (m) => onResult(m as SimResult));
    child.on('exit', (code) => {
      if (code !== 0) {
        console.error(`worker for seeds ${from}..${from + n - 1} exited with ${code}`);
        process.exitCode = 1;
      }
      if (--running === 0) finish();
    });
  }
}

function finish(stoppedEarly = false): void {
  const seconds = (Date.now() - started) / 1000;
  console.log(
    `sim: ${done} seeds in ${seconds.toFixed(1)} s: ${totals.leaders} leaders elected, ${totals.crashes} crashes, ` +
      `${totals.snapshotsInstalled} snapshots installed, ${totals.readsServed} reads served, ` +
      `${totals.confChangesApplied} conf changes, ${totals.transfers} transfers, ${totals.messages} messages`,
  );
  if (appliedState)
    console.log(
      `sim: state store: ${totals.snapshotsStreamed} snapshots streamed; crashes at a write ${totals.crashesAtStateWrite}, ` +
        `writing a snapshot's records aside ${totals.crashesPreparingSnapshot}, before its switch ${totals.crashesBeforeSnapshotSwitch}, ` +
        `after its switch ${totals.crashesAfterSnapshotSwitch}; ${totals.installsCheckedAfterCrash} stores checked after a crash in an install`,
    );
  if (appliedState)
    console.log(
      `sim: restarts from the stored image ${totals.restartsFromImage}, from the snapshot and the log ${totals.restartsFromSnapshot}; ` +
        `${totals.imagesStored} images of the small parts stored, ${totals.smallPartsChecked} checks of the small parts`,
    );
  if (failures.length > 0 || done !== count) {
    const missing = done !== count && !stoppedEarly ? ` (${count - done} did not report)` : '';
    console.log(`sim: ${failures.length} of ${done} seeds run FAILED${missing}`);
    process.exitCode = 1;
  } else {
    console.log(`sim: all ${count} seeds passed`);
  }
}
