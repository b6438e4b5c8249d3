/**
 * A chaos run's history as JSON lines, Jepsen style, so a run (pass or fail) can be checked again
 * by this project's checker (`npm run chaos -- --check FILE`) or by another tool. One event per
 * line, in time order:
 *
 *   {"process":3,"type":"invoke","f":"cas","key":"chaos/k1","value":"p3-7","version":4,"time":1234567}
 *   {"process":3,"type":"fail","f":"cas","key":"chaos/k1","value":"p3-7","version":4,"current":5,"time":1236001}
 *   {"process":1,"type":"ok","f":"get","key":"chaos/k0","value":"p0-2","version":2,"time":...}
 *   {"process":"nemesis","type":"fault","kind":"kill-leader","targets":["m2"],"start":...,"end":...,"detail":"..."}
 *
 * `time`, `start` and `end` are nanoseconds since the workload began. An invoke of a put carries
 * the value; of a cas, the value and the version expected. An ok of a put or cas carries the
 * version it made; of a get, the value and version read (version 0 and value null: not found).
 * A refused cas is `fail` with `current`, the version the manager said the key was at (the
 * refusal's reason is always that the version differed: other refusals are not recorded as
 * fail). An `info` is a request whose outcome is unknown (it may take effect at any later time),
 * at the time its client gave up. A get with `"stale":true` was served without a read index.
 *
 * Expiry probes (expiry.ts: keys written once with a time to live, then read) are lines of their
 * own, one per request, kept apart from the operations the linearizability checker takes:
 *
 *   {"process":"ttl","type":"ok","f":"put","key":"chaos/ttl/4","value":"ttl-4","ttl":2000,"manager":"m2","start":...,"time":...}
 *   {"process":"ttl","type":"ok","f":"get","key":"chaos/ttl/4","value":null,"stale":false,"manager":"m1","start":...,"time":...}
 *
 * `start` is when the request was sent, `time` when it was answered (a get's value null: not found).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import type { ExpiryProbe } from './expiry.ts';
import type { Operation } from './linearizability.ts';
import type { FaultRecord } from './nemesis.ts';

const NS_PER_MS = 1e6;
const ns = (ms: number): number => Math.round(ms * NS_PER_MS);

type Line = Record<string, unknown> & { readonly time: number };

/** The lines of a history, in time order (at equal times, completions before invocations). */
export function historyLines(
  ops: readonly Operation[],
  faults: readonly FaultRecord[],
  probes: readonly ExpiryProbe[] = [],
): string[] {
  const events: Array<{ line: Line; order: number }> = [];
  for (const probe of probes)
    events.push({
      line: {
        process: 'ttl',
        type: 'ok',
        f: probe.kind,
        key: probe.key,
        value: probe.value,
        ...(probe.ttlMs === undefined ? {} : { ttl: probe.ttlMs }),
        ...(probe.kind === 'get' ? { stale: probe.stale === true } : {}),
        manager: probe.manager,
        start: ns(probe.invokeMs),
        time: ns(probe.completeMs),
      },
      order: 0,
    });
  for (const op of ops) {
    const base = { process: op.process, f: op.kind, key: op.key };
    const invoke: Line = {
      ...base,
      type: 'invoke',
      ...(op.kind === 'get' ? {} : { value: op.value ?? null }),
      ...(op.kind === 'cas' ? { version: op.expectedVersion } : {}),
      ...(op.stale === true ? { stale: true } : {}),
      time: ns(op.invokeMs),
    };
    events.push({ line: invoke, order: 1 });
    const endMs = op.outcome === 'info' ? (op.gaveUpMs ?? op.invokeMs) : op.completeMs;
    const done: Line = {
      ...base,
      type: op.outcome,
      ...(op.kind === 'get'
        ? { value: op.readValue ?? null, version: op.version ?? null }
        : { value: op.value ?? null, version: op.outcome === 'ok' ? op.version : (op.expectedVersion ?? null) }),
      ...(op.currentVersion === undefined ? {} : { current: op.currentVersion }),
      ...(op.stale === true ? { stale: true } : {}),
      time: ns(endMs),
    };
    events.push({ line: done, order: 0 });
  }
  for (const fault of faults)
    events.push({
      line: {
        process: 'nemesis',
        type: 'fault',
        kind: fault.nemesis,
        targets: fault.targets,
        start: ns(fault.atMs),
        end: ns(fault.endMs),
        detail: fault.detail,
        ...(fault.problems === undefined ? {} : { problems: fault.problems }),
        time: ns(fault.atMs),
      },
      order: 2,
    });
  events.sort((a, b) => a.line.time - b.line.time || a.order - b.order);
  return events.map((e) => JSON.stringify(e.line));
}

export function writeHistoryFile(
  file: string,
  ops: readonly Operation[],
  faults: readonly FaultRecord[],
  probes: readonly ExpiryProbe[] = [],
): void {
  writeFileSync(file, `${historyLines(ops, faults, probes).join('\n')}\n`);
}

/**
 * The operations and faults of a history file, as the checker takes them. Each completion is
 * matched to the open invocation of its process; an info's completion goes to Infinity.
 */
export function readHistoryFile(file: string): { ops: Operation[]; faults: FaultRecord[]; probes: ExpiryProbe[] } {
  return parseHistoryLines(readFileSync(file, 'utf8').split('\n'));
}

export function parseHistoryLines(lines: readonly string[]): {
  ops: Operation[];
  faults: FaultRecord[];
  probes: ExpiryProbe[];
} {
  const ops: Operation[] = [];
  const probes: ExpiryProbe[] = [];
  const faults: FaultRecord[] = [];
  const open = new Map<number, Line>();
  let id = 0;
  for (const [n, text] of lines.entries()) {
    if (text.trim() === '') continue;
    const line = JSON.parse(text) as Line & Record<string, unknown>;
    const where = `line ${n + 1}`;
    if (line['process'] === 'nemesis') {
      faults.push({
        atMs: Number(line['start']) / NS_PER_MS,
        endMs: Number(line['end']) / NS_PER_MS,
        nemesis: line['kind'] as FaultRecord['nemesis'],
        targets: line['targets'] as string[],
        detail: String(line['detail'] ?? ''),
        ...(Array.isArray(line['problems']) ? { problems: (line['problems'] as unknown[]).map(String) } : {}),
      });
      continue;
    }
    if (line['process'] === 'ttl') {
      const kind = line['f'];
      if (kind !== 'put' && kind !== 'get') throw new Error(`${where}: an expiry probe is a put or a get`);
      probes.push({
        kind,
        key: String(line['key']),
        value: typeof line['value'] === 'string' ? line['value'] : null,
        ...(typeof line['ttl'] === 'number' ? { ttlMs: line['ttl'] } : {}),
        ...(line['stale'] === true ? { stale: true } : {}),
        manager: String(line['manager'] ?? ''),
        invokeMs: Number(line['start']) / NS_PER_MS,
        completeMs: line.time / NS_PER_MS,
      });
      continue;
    }
    const process = line['process'];
    if (typeof process !== 'number') throw new Error(`${where}: "process" is not a number or "nemesis"`);
    if (line['type'] === 'invoke') {
      if (open.has(process)) throw new Error(`${where}: process ${process} invokes twice without a completion`);
      open.set(process, line);
      continue;
    }
    const invoke = open.get(process);
    if (invoke === undefined) throw new Error(`${where}: a completion of process ${process} without its invocation`);
    open.delete(process);
    const kind = invoke['f'] as Operation['kind'];
    const outcome = line['type'] as Operation['outcome'];
    if (!['ok', 'fail', 'info'].includes(outcome)) throw new Error(`${where}: type "${String(outcome)}"`);
    const invokeMs = invoke.time / NS_PER_MS;
    const atMs = line.time / NS_PER_MS;
    const op: Operation = {
      id: id++,
      process,
      key: String(invoke['key']),
      kind,
      ...(kind === 'get' ? {} : { value: String(invoke['value']) }),
      ...(kind === 'cas' ? { expectedVersion: Number(invoke['version']) } : {}),
      invokeMs,
      completeMs: outcome === 'info' ? Infinity : atMs,
      outcome,
      ...(outcome === 'ok' ? { version: Number(line['version']) } : {}),
      ...(kind === 'get' && outcome === 'ok' ? { readValue: (line['value'] as string | null) ?? null } : {}),
      ...(invoke['stale'] === true ? { stale: true } : {}),
      ...(typeof line['current'] === 'number' ? { currentVersion: line['current'] } : {}),
      ...(outcome === 'info' ? { gaveUpMs: atMs } : {}),
    };
    ops.push(op);
  }
  return { ops, faults, probes };
}
