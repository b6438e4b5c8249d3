// npm run chaos -- [--managers 5] [--duration S] [--nemesis kill-leader,partition,...] [--seed N]
import { parseArgs } from 'node:util';
import { NEMESES, formatSummary, runChaos, type NemesisName } from './run.ts';

const { values } = parseArgs({
  options: {
    managers: { type: 'string', default: '3' },
    duration: { type: 'string', default: '60' },
    nemesis: { type: 'string', default: NEMESES.join(',') },
    seed: { type: 'string' },
    clients: { type: 'string', default: '5' },
    network: { type: 'string', default: 'auto' },
  },
});
const nemeses = values.nemesis.split(',').filter((n) => n !== '');
const unknown = nemeses.filter((n) => !(NEMESES as readonly string[]).includes(n));
if (unknown.length > 0) {
  console.error(`chaos: unknown nemesis ${unknown.join(', ')}; known: ${NEMESES.join(', ')}`);
  process.exit(2);
}
if (!['auto', 'loopback', 'netns'].includes(values.network)) {
  console.error('chaos: --network takes auto, loopback or netns');
  process.exit(2);
}
const seed = values.seed === undefined ? Math.floor(Math.random() * 1e9) : Number(values.seed);
const summary = await runChaos({
  managers: Number(values.managers),
  durationS: Number(values.duration),
  nemeses: nemeses as NemesisName[],
  seed,
  clients: Number(values.clients),
  network: values.network as 'auto' | 'loopback' | 'netns',
  log: (line) => console.log(line),
});
console.log(formatSummary(summary));
process.exit(summary.ok ? 0 : 1);
