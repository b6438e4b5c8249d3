// npm run fuzz -- [--seed N] [--duration S] [--managers 1|3] [--iterations N]
import { parseArgs } from 'node:util';
import { formatSummary, runFuzz } from './fuzz.ts';

const USAGE = `Usage: npm run fuzz -- [options]

Sends random and mutated requests to every gRPC method of managers started in this process
(anonymous, as the admin, as a narrow identity, with forged certificates), and checks that
every answer is one the server may give and that every manager keeps answering.

Options:
  --seed N        seed of every random choice (default: random; always printed)
  --duration S    seconds of requests (default 60)
  --managers N    1 or 3 managers (default 3)
  --iterations N  stop after N requests, if that comes first (default: no limit)
  -h, --help      this text

Exit status: 0 if nothing failed, 1 if something did, 2 for a usage error.`;

function usageError(message: string): never {
  console.error(`fuzz: ${message}\n\n${USAGE}`);
  process.exit(2);
}

let values: { seed?: string; duration: string; managers: string; iterations?: string; help?: boolean };
try {
  ({ values } = parseArgs({
    options: {
      seed: { type: 'string' },
      duration: { type: 'string', default: '60' },
      managers: { type: 'string', default: '3' },
      iterations: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  }));
} catch (error) {
  usageError((error as Error).message);
}
if (values.help === true) {
  console.log(USAGE);
  process.exit(0);
}

const seed = values.seed === undefined ? Math.floor(Math.random() * 1e9) : Number(values.seed);
if (!Number.isSafeInteger(seed)) usageError(`--seed takes an integer, not ${JSON.stringify(values.seed)}`);
const durationS = Number(values.duration);
if (!Number.isFinite(durationS) || durationS <= 0)
  usageError(`--duration takes a positive number of seconds, not ${JSON.stringify(values.duration)}`);
const managers = Number(values.managers);
if (managers !== 1 && managers !== 3) usageError(`--managers takes 1 or 3, not ${JSON.stringify(values.managers)}`);
const iterations = values.iterations === undefined ? undefined : Number(values.iterations);
if (iterations !== undefined && (!Number.isSafeInteger(iterations) || iterations <= 0))
  usageError(`--iterations takes a positive integer, not ${JSON.stringify(values.iterations)}`);

console.log(`fuzz: seed ${seed} (reproduce with --seed ${seed})`);
const summary = await runFuzz({
  seed,
  durationS,
  managers,
  ...(iterations === undefined ? {} : { iterations }),
  log: (line) => console.log(line),
});
console.log(formatSummary(summary));
process.exit(summary.ok ? 0 : 1);
