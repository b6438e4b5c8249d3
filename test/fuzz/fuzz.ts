/**
 * A seeded, time-bounded fuzzer of every gRPC method a manager serves. It starts managers in this
 * process (InProcessCluster: real mutual TLS on 127.0.0.1), then, per iteration, draws from one
 * SeededRandom a method, a payload (random bytes, a plausible message, one with hostile values,
 * or a mutated one), a caller and a manager, sends it with a deadline, and judges the answer
 * (oracle.ts). Every so often, and at the end, it checks that every manager still answers: a
 * canary write and read as the admin, and a health check that says SERVING. Exceptions and
 * rejections nobody handled, and errors the managers log, fail the run too.
 *
 * Methods are discovered from the loaded service definitions (coffer.v1 from the protos, health
 * and reflection as the server registers them), so a new method is fuzzed without a change here.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { HealthImplementation } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import { issueCertificate, newLeafKey, parseJoinToken } from '../../src/crypto/pki.ts';
import { ADMIN_IDENTITY } from '../../src/server/rpc.ts';
import { API_PROTO_FILES, LOADER_OPTIONS } from '../../src/transport/proto.ts';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials } from '../../src/transport/tls.ts';
import { createLogger } from '../../src/util/logger.ts';
import { SeededRandom } from '../../src/util/prng.ts';
import { eventually } from '../processes/processes.ts';
import { InProcessCluster } from '../server/in-process-cluster.ts';
import { CALLERS, NARROW_GLOB, judge, type CallerName, type MethodFacts, type Outcome } from './oracle.ts';
import {
  MAX_RECEIVE_BYTES,
  between,
  makePayload,
  pick,
  type Hints,
  type MessageDescriptor,
  type Payload,
  type PayloadTarget,
  type ResolveType,
} from './payloads.ts';

export interface FuzzOptions {
  readonly seed: number;
  /** How long to send requests (the cluster's start and the final checks come on top). */
  readonly durationS: number;
  readonly managers: 1 | 3;
  /** Stop after this many iterations, if that comes before the duration. */
  readonly iterations?: number;
  /** Check that every manager answers every this many iterations (and at least every 10 s). */
  readonly checkEvery?: number;
  /** Deadline of each fuzzed request. */
  readonly deadlineMs?: number;
  /** Progress lines. */
  readonly log?: (line: string) => void;
}

export interface FailureRecord {
  readonly kind: 'response' | 'check' | 'process' | 'log';
  readonly reason: string;
  readonly iteration: number;
  readonly method?: string;
  readonly caller?: CallerName;
  readonly manager?: number;
  readonly payload?: {
    readonly kind: string;
    readonly how: string;
    readonly bytes: number;
    readonly hexPrefix: string;
  };
  /** How many failures had the same signature (this record is the first). */
  count: number;
}

export interface FuzzSummary {
  readonly seed: number;
  readonly managers: number;
  readonly durationS: number;
  readonly iterations: number;
  readonly checks: number;
  readonly methods: readonly string[];
  readonly codes: Record<string, number>;
  readonly byCaller: Record<string, Record<string, number>>;
  readonly byMethod: Record<string, Record<string, number>>;
  readonly byPayload: Record<string, number>;
  readonly slowest: {
    readonly method: string;
    readonly caller: string;
    readonly ms: number;
    readonly iteration: number;
  } | null;
  /** Distinct failures, each the first of its kind with a count. */
  readonly failures: readonly FailureRecord[];
  readonly failureCount: number;
  readonly ok: boolean;
  readonly reproduce: string;
}

/** A method as the fuzzer calls it: its path, its shape, and how its messages are made and read. */
export interface FuzzMethod extends MethodFacts, PayloadTarget {
  readonly path: string;
  readonly requestStream: boolean;
  readonly responseStream: boolean;
  /** The decoder the server uses, strict (throws on bytes that do not decode). */
  readonly requestDeserialize: (bytes: Buffer) => unknown;
  readonly responseDeserialize: (bytes: Buffer) => unknown;
}

/** The fuzzer's narrow identity and its policy: read and list on fuzz/** only. */
export const NARROW_IDENTITY = 'fuzz-narrow';
export const NARROW_POLICY = 'fuzz-narrow';
/** A client name the cluster never issued (its certificate is minted with the CA key). */
export const GHOST_IDENTITY = 'fuzz-ghost';
/** A manager id that is not a member (above the ids joins hand out, 2..2^31). */
export const GHOST_MANAGER_ID = 4_294_967_000;
/** Secrets the canary checks write; the admin's fuzzed requests never touch them. */
export const CANARY_PREFIX = 'zz-fuzz-canary';

/**
 * Methods never sent as the admin (the root identity), because they would legitimately change
 * the cluster for the rest of the run: a new unlock, root or CA key, autolock off, a destroyed
 * data key, a manager removed or demoted or leadership moved, the revocation of an identity the
 * fuzzer uses. Backup.Save is only slow (a full image each time). They are still fuzzed as every
 * other caller, which must be refused.
 */
export const NOT_AS_ADMIN: ReadonlySet<string> = new Set([
  'Keys.RotateUnlock',
  'Keys.AutolockOff',
  'Keys.Destroy',
  'Keys.RotateRoot',
  'Cluster.RemoveMember',
  'Cluster.Demote',
  'Cluster.RotateCa',
  'Cluster.RetireCa',
  'Cluster.TransferLeader',
  'Identities.Revoke',
  'Backup.Save',
]);

/**
 * Whether a request must not go out as the admin: a method above, or one that would change what
 * the oracles rely on (the narrow identity's policy or the identity itself, the admin's own
 * identity, the canary secrets). Judged on the request as the server will decode it; one that
 * does not decode is refused before it is used, so it may go.
 */
export function notAsAdmin(method: FuzzMethod, request: Record<string, unknown> | undefined): boolean {
  if (NOT_AS_ADMIN.has(method.name)) return true;
  const name = request?.['name'];
  if (typeof name !== 'string') return false;
  if ((method.name === 'Policies.Put' || method.name === 'Policies.Remove') && name === NARROW_POLICY) return true;
  if (method.name === 'Identities.Issue' && (name === ADMIN_IDENTITY || name === NARROW_IDENTITY)) return true;
  return method.service === 'coffer.v1.Secrets' && name.startsWith(CANARY_PREFIX);
}

type AnyMethod = grpc.MethodDefinition<unknown, unknown> & { requestType?: { type?: MessageDescriptor } };

/** Every method the managers serve: each coffer.v1 service in the protos, health and reflection. */
export function discoverMethods(): FuzzMethod[] {
  // proto-loader's definition (with each type's descriptor), as reflection is given it.
  const definition = protoLoader.loadSync([...API_PROTO_FILES], LOADER_OPTIONS);
  const messageType = (name: string): MessageDescriptor | null => {
    const entry = definition[name];
    return entry !== undefined && 'format' in entry ? (entry.type as MessageDescriptor) : null;
  };
  const services: grpc.ServiceDefinition[] = [];
  for (const entry of Object.values(definition))
    if (!('format' in entry)) services.push(entry as grpc.ServiceDefinition);
  // Health and reflection: their definitions, as they add themselves to the server.
  const capture = {
    addService: (service: grpc.ServiceDefinition) => void services.push(service),
  } as unknown as grpc.Server;
  new HealthImplementation({ '': 'SERVING' }).addToServer(capture);
  new ReflectionService(definition, {}).addToServer(capture);

  const methods: FuzzMethod[] = [];
  for (const service of services) {
    for (const [methodName, raw] of Object.entries(service)) {
      const method = raw as AnyMethod;
      const serviceName = method.path.slice(1, method.path.lastIndexOf('/'));
      const pkg = serviceName.slice(0, serviceName.lastIndexOf('.'));
      // Field types are named relative to the package; types of other packages' protos are out of reach (fields left out).
      const resolve: ResolveType = (typeName) =>
        messageType(typeName.replace(/^\./, '')) ?? messageType(`${pkg}.${typeName}`);
      methods.push({
        name: serviceName.startsWith('coffer.v1.')
          ? `${serviceName.slice('coffer.v1.'.length)}.${methodName}`
          : `${serviceName}.${methodName}`,
        service: serviceName,
        path: method.path,
        requestStream: method.requestStream,
        responseStream: method.responseStream,
        requestType: method.requestType?.type ?? null,
        resolve,
        requestSerialize: method.requestSerialize as (value: object) => Buffer,
        requestDeserialize: method.requestDeserialize,
        responseDeserialize: method.responseDeserialize,
      });
    }
  }
  return methods;
}

/** Callers as drawn: the admin more often than the others, since only it reaches most handlers' depths. */
const CALLER_DRAW: readonly CallerName[] = [
  'admin',
  'admin',
  'admin',
  'anonymous',
  'anonymous',
  'narrow',
  'narrow',
  'forged-client',
  'forged-client',
  'forged-manager',
];

const identity = (bytes: Buffer): Buffer => bytes;
/** A server stream that has sent something is cut this long after its first message. */
const STREAM_CUT_MS = 300;
/** Answers kept per request for the oracle. */
const RESPONSES_KEPT = 4;

interface Sent {
  readonly outcome: Outcome;
  readonly responses: Buffer[];
}

/** Sends one request (or stream of requests) with raw bytes, as grpc-js would frame any message. */
function send(client: grpc.Client, method: FuzzMethod, messages: readonly Buffer[], deadlineMs: number): Promise<Sent> {
  const options: grpc.CallOptions = { deadline: Date.now() + deadlineMs };
  const responses: Buffer[] = [];
  return new Promise<Sent>((resolve) => {
    const done = (code: grpc.status, details: string, streamed = false): void =>
      resolve({ outcome: { code, details, streamedBeforeDeadline: streamed }, responses });
    if (!method.requestStream && !method.responseStream) {
      client.makeUnaryRequest(method.path, identity, identity, messages[0]!, options, (error, response) => {
        if (response !== undefined) responses.push(response);
        done(error === null ? grpc.status.OK : error.code, error?.details ?? '');
      });
      return;
    }
    if (method.requestStream && !method.responseStream) {
      const call = client.makeClientStreamRequest(method.path, identity, identity, options, (error, response) => {
        if (response !== undefined) responses.push(response);
        done(error === null ? grpc.status.OK : error.code, error?.details ?? '');
      });
      call.on('error', () => undefined); // the callback has the status
      for (const message of messages) call.write(message);
      call.end();
      return;
    }
    // Server or bidirectional streaming: answers are collected until the status; a stream that
    // has sent something is cut shortly after (a watch never ends by itself).
    const call = method.requestStream
      ? client.makeBidiStreamRequest(method.path, identity, identity, options)
      : client.makeServerStreamRequest(method.path, identity, identity, messages[0]!, options);
    let cut = false;
    let timer: NodeJS.Timeout | null = null;
    call.on('data', (message: Buffer) => {
      if (responses.length < RESPONSES_KEPT) responses.push(message);
      timer ??= setTimeout(() => {
        cut = true;
        call.cancel();
      }, STREAM_CUT_MS);
    });
    call.on('error', () => undefined); // the status event has it
    call.on('status', (status: grpc.StatusObject) => {
      if (timer !== null) clearTimeout(timer);
      if (cut && status.code === grpc.status.CANCELLED)
        return done(grpc.status.OK, `cut after ${responses.length} messages`, true);
      done(status.code, status.details, responses.length > 0);
    });
    if (method.requestStream) {
      const writable = call as grpc.ClientDuplexStream<Buffer, Buffer>;
      for (const message of messages) writable.write(message);
      writable.end();
    }
  });
}

function decode(decoder: (bytes: Buffer) => unknown, bytes: Buffer | undefined): Record<string, unknown> | undefined {
  if (bytes === undefined) return undefined;
  try {
    const value = decoder(bytes);
    return typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function describe(error: unknown): string {
  if (error instanceof Error)
    return `${error.name}: ${error.message}${
      error.stack === undefined
        ? ''
        : ` (${error.stack
            .split('\n')
            .slice(1, 4)
            .map((l) => l.trim())
            .join(' < ')})`
    }`;
  return String(error);
}

function bump(counts: Record<string, number>, key: string): void {
  counts[key] = (counts[key] ?? 0) + 1;
}

/** The counts kept under `name`, made on first use. */
function group(groups: Record<string, Record<string, number>>, name: string): Record<string, number> {
  const counts = groups[name] ?? {};
  groups[name] = counts;
  return counts;
}

const codeName = (code: grpc.status): string => grpc.status[code] ?? String(code);

export async function runFuzz(options: FuzzOptions): Promise<FuzzSummary> {
  const { seed, managers } = options;
  const deadlineMs = options.deadlineMs ?? 5000;
  const checkEvery = options.checkEvery ?? 200;
  const log = options.log ?? ((): void => undefined);
  const rng = new SeededRandom(seed);
  const methods = discoverMethods();

  const failures = new Map<string, FailureRecord>();
  let failureCount = 0;
  let iteration = -1;
  const fail = (signature: string, record: Omit<FailureRecord, 'count'>): void => {
    failureCount++;
    const known = failures.get(signature);
    if (known !== undefined) known.count++;
    else failures.set(signature, { ...record, count: 1 });
    if (failureCount <= 20)
      log(
        `fuzz: FAILURE at iteration ${record.iteration}: ${record.method ?? record.kind}${record.caller === undefined ? '' : ` as ${record.caller}`}: ${record.reason}`,
      );
  };

  // Crashes: nothing may throw or reject unhandled in this process, where the managers run.
  const onRejection = (reason: unknown): void =>
    fail(`unhandled-rejection ${describe(reason).slice(0, 120)}`, {
      kind: 'process',
      reason: `unhandled rejection: ${describe(reason)}`,
      iteration,
    });
  const onException = (error: unknown): void =>
    fail(`uncaught-exception ${describe(error).slice(0, 120)}`, {
      kind: 'process',
      reason: `uncaught exception: ${describe(error)}`,
      iteration,
    });
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);

  // Errors the managers log (a request that failed inside, an audit record that could not be written).
  const errorLines: string[] = [];
  const logger = createLogger({
    level: 'error',
    format: 'json',
    destination: { write: (line: string) => void errorLines.push(line) },
  });

  const codes: Record<string, number> = {};
  const byCaller: Record<string, Record<string, number>> = {};
  const byMethod: Record<string, Record<string, number>> = {};
  const byPayload: Record<string, number> = {};
  let slowest: FuzzSummary['slowest'] = null;
  let checks = 0;
  let cluster: InProcessCluster | null = null;
  const clients: grpc.Client[] = [];
  const started = performance.now();
  let fuzzStarted = started;

  try {
    cluster = await InProcessCluster.start(managers, { logger });
    const c = cluster;
    const leader = c.addresses[0]!;
    const caPem = readFileSync(join(c.adminDir, 'ca.crt'), 'utf8');
    const ca = c.nodes[0]!.ca;
    const nowMs = Date.now();

    // The narrow identity: a policy of read and list on fuzz/**, and a certificate for it.
    await c.admin.call(leader, 'Policies', 'put', {
      name: NARROW_POLICY,
      rules: [{ path: NARROW_GLOB, capabilities: ['read', 'list'], deny: false }],
    });
    const narrowKey = newLeafKey();
    const issued = await c.admin.call<{ certificatePem: string }>(leader, 'Identities', 'issue', {
      name: NARROW_IDENTITY,
      policies: [NARROW_POLICY],
      publicKeyPem: narrowKey.publicPem,
    });
    for (const [name, value] of [
      ['fuzz/a', 'a'],
      ['fuzz/b/c', 'bc'],
      ['app/db', 'outside the narrow glob'],
    ] as const) {
      await c.admin.call(leader, 'Secrets', 'put', { name, value: Buffer.from(value) });
    }
    await eventually('every manager to know the narrow identity', 20_000, async () =>
      c.nodes.every((n) => n.state.access.identities.has(NARROW_IDENTITY)) ? true : undefined,
    );
    const ghost = issueCertificate(ca, { id: GHOST_IDENTITY, role: 'client', clusterId: c.clusterId, nowMs });
    const ghostManager = issueCertificate(ca, {
      id: String(GHOST_MANAGER_ID),
      role: 'manager',
      clusterId: c.clusterId,
      nowMs,
      hosts: ['127.0.0.1'],
    });

    const material: Record<CallerName, { caPem: string; certPem: string | null; keyPem: string | null }> = {
      anonymous: { caPem, certPem: null, keyPem: null },
      admin: {
        caPem,
        certPem: readFileSync(join(c.adminDir, 'admin.crt'), 'utf8'),
        keyPem: readFileSync(join(c.adminDir, 'admin.key'), 'utf8'),
      },
      narrow: { caPem, certPem: issued.certificatePem, keyPem: narrowKey.privatePem },
      'forged-client': { caPem, certPem: ghost.certPem, keyPem: ghost.keyPem },
      'forged-manager': { caPem, certPem: ghostManager.certPem, keyPem: ghostManager.keyPem },
    };
    // One channel per caller and manager, kept for the run (grpc-js reconnects if one is closed).
    const channels = new Map<string, grpc.Client>();
    const channel = (caller: CallerName, manager: number): grpc.Client => {
      const key = `${caller}@${manager}`;
      let client = channels.get(key);
      if (client === undefined) {
        const credentials = managerChannelCredentials(material[caller] as never, { clusterId: c.clusterId });
        client = new grpc.Client(c.addresses[manager]!, credentials, {
          ...MANAGER_CHANNEL_OPTIONS,
          'grpc.max_receive_message_length': -1,
          'grpc.max_send_message_length': -1,
        });
        channels.set(key, client);
        clients.push(client);
      }
      return client;
    };

    const hints: Hints = {
      secretNames: ['fuzz/a', 'fuzz/b/c', 'fuzz/x', 'fuzz', 'fuzz/d/e/f', 'app/db', 'gen/x', 'a'],
      policyNames: [NARROW_POLICY, 'fuzz-p1', 'ops', 'root'],
      identityNames: [NARROW_IDENTITY, 'fuzz-id1', 'bob', ADMIN_IDENTITY, GHOST_IDENTITY],
      publicKeyPem: newLeafKey().publicPem,
      nodeIds: c.nodes.map((n) => n.config.nodeId),
      addresses: c.addresses,
      tokenSecret: parseJoinToken(c.joinToken).secret,
    };

    const health = methods.find((m) => m.path === '/grpc.health.v1.Health/Check');
    if (health === undefined) throw new Error('the health service was not found');

    /** Every manager: unlocked, answers a canary write and read as the admin, and says SERVING. */
    const check = async (final: boolean): Promise<void> => {
      checks++;
      await Promise.all(
        c.nodes.map(async (node, k) => {
          const address = c.addresses[k]!;
          const name = `${CANARY_PREFIX}/m${k + 1}`;
          const value = Buffer.from(`seed ${seed} iteration ${iteration}`);
          const what = (step: string): Omit<FailureRecord, 'count'> => ({
            kind: 'check',
            reason: '',
            iteration,
            manager: k + 1,
            method: step,
          });
          if (node.manager.locked)
            return fail(`check locked m${k}`, { ...what('manager'), reason: `manager ${k + 1} is locked` });
          try {
            await eventually(`manager ${k + 1} to answer a canary write and read`, 10_000, async () => {
              await c.admin.call(address, 'Secrets', 'put', { name, value }, 3000);
              const got = await c.admin.call<{ value: Buffer }>(address, 'Secrets', 'get', { name }, 3000);
              if (!Buffer.from(got.value).equals(value))
                throw new Error(`read ${JSON.stringify(Buffer.from(got.value).toString())} back`);
              return true;
            });
          } catch (error) {
            fail(`check canary m${k}`, { ...what('canary'), reason: (error as Error).message });
          }
          try {
            await eventually(`manager ${k + 1} to say SERVING`, 10_000, async () => {
              const sent = await send(channel('admin', k), health, [health.requestSerialize({ service: '' })], 3000);
              const reply = decode(health.responseDeserialize, sent.responses[0]);
              if (sent.outcome.code !== grpc.status.OK)
                throw new Error(`${codeName(sent.outcome.code)}: ${sent.outcome.details}`);
              if (reply?.['status'] !== 'SERVING' && reply?.['status'] !== 1)
                throw new Error(`status ${String(reply?.['status'])}`);
              return true;
            });
          } catch (error) {
            fail(`check health m${k}`, { ...what('health'), reason: (error as Error).message });
          }
          if (final) {
            try {
              const report = await c.admin.call<{ ok: boolean; problem: string }>(
                address,
                'Audit',
                'verify',
                {},
                30_000,
              );
              if (!report.ok)
                fail(`check audit m${k}`, { ...what('audit'), reason: `the audit chain is broken: ${report.problem}` });
            } catch (error) {
              fail(`check audit m${k}`, { ...what('audit'), reason: (error as Error).message });
            }
          }
        }),
      );
      for (const line of errorLines.splice(0)) {
        let entry: { msg?: string; event?: string; method?: string; err?: { message?: string; stack?: string } } = {};
        try {
          entry = JSON.parse(line) as typeof entry;
        } catch {
          entry = { msg: line };
        }
        const where =
          entry.err?.stack
            ?.split('\n')
            .slice(1, 4)
            .map((l) => l.trim())
            .join(' < ') ?? '';
        fail(`log ${entry.event} ${entry.method} ${entry.err?.message?.slice(0, 80)}`, {
          kind: 'log',
          reason: `a manager logged an error: ${entry.msg} (${entry.event ?? ''} ${entry.method ?? ''}): ${entry.err?.message ?? ''} ${where}`,
          iteration,
          ...(entry.method === undefined ? {} : { method: entry.method }),
        });
      }
    };

    await check(false);
    log(`fuzz: ${methods.length} methods, ${managers} manager(s), seed ${seed}; fuzzing for ${options.durationS} s`);
    fuzzStarted = performance.now();
    const endAt = fuzzStarted + options.durationS * 1000;
    let lastCheck = performance.now();
    let lastProgress = performance.now();
    const others = CALLERS.filter((k) => k !== 'admin');

    for (
      iteration = 0;
      performance.now() < endAt && (options.iterations === undefined || iteration < options.iterations);
      iteration++
    ) {
      const method = pick(rng, methods);
      const count = method.requestStream ? between(rng, 1, 3) : 1;
      const payloads: Payload[] = [];
      for (let k = 0; k < count; k++) payloads.push(makePayload(rng, method, hints));
      let caller = pick(rng, CALLER_DRAW);
      const request = decode(method.requestDeserialize, payloads[0]!.bytes);
      if (caller === 'admin' && notAsAdmin(method, request)) caller = pick(rng, others);
      const manager = rng.int(managers);

      const sentAt = performance.now();
      const sent = await send(
        channel(caller, manager),
        method,
        payloads.map((p) => p.bytes),
        deadlineMs,
      );
      const ms = performance.now() - sentAt;
      if (slowest === null || ms > slowest.ms) slowest = { method: method.name, caller, ms: Math.round(ms), iteration };

      const code = codeName(sent.outcome.code);
      bump(codes, code);
      bump(group(byCaller, caller), code);
      bump(group(byMethod, method.name), code);
      for (const p of payloads) bump(byPayload, p.kind);

      const largest = Math.max(...payloads.map((p) => p.bytes.length));
      const wrong = judge(
        method,
        caller,
        sent.outcome,
        {
          request,
          responses: sent.responses.map((r) => decode(method.responseDeserialize, r)),
          largestMessageBytes: largest,
        },
        MAX_RECEIVE_BYTES,
      );
      if (wrong !== null) {
        const first = payloads[0]!;
        fail(`response ${method.name} ${caller} ${code} ${wrong.slice(0, 60)}`, {
          kind: 'response',
          reason: wrong,
          iteration,
          method: method.name,
          caller,
          manager: manager + 1,
          payload: {
            kind: payloads.map((p) => p.kind).join('+'),
            how: payloads.map((p) => p.how).join(' | '),
            bytes: first.bytes.length,
            hexPrefix: first.bytes.subarray(0, 64).toString('hex'),
          },
        });
      }

      const now = performance.now();
      if ((iteration + 1) % checkEvery === 0 || now - lastCheck > 10_000) {
        await check(false);
        lastCheck = performance.now();
      }
      if (now - lastProgress > 10_000) {
        const memory = process.memoryUsage();
        log(
          `fuzz: ${((now - fuzzStarted) / 1000).toFixed(0)} s, ${iteration + 1} iterations, ${failureCount} failures; heap ${Math.round(memory.heapUsed / 2 ** 20)} MiB, rss ${Math.round(memory.rss / 2 ** 20)} MiB`,
        );
        lastProgress = now;
      }
    }
    await check(true);
  } catch (error) {
    fail(`setup ${describe(error).slice(0, 80)}`, {
      kind: 'process',
      reason: `the fuzzer itself failed: ${describe(error)}`,
      iteration,
    });
  } finally {
    for (const client of clients) client.close();
    await cluster
      ?.stop()
      .catch((error: unknown) =>
        fail('stop', { kind: 'process', reason: `stopping the managers failed: ${describe(error)}`, iteration }),
      );
    // Late rejections of the managers' work surface on the next turns.
    await new Promise((resolve) => setTimeout(resolve, 100));
    process.off('unhandledRejection', onRejection);
    process.off('uncaughtException', onException);
  }

  const iterations = Math.max(0, iteration);
  return {
    seed,
    managers,
    durationS: Math.round((performance.now() - fuzzStarted) / 100) / 10,
    iterations,
    checks,
    methods: methods.map((m) => m.name),
    codes,
    byCaller,
    byMethod,
    byPayload,
    slowest,
    failures: [...failures.values()],
    failureCount,
    ok: failureCount === 0,
    reproduce: `npm run fuzz -- --seed ${seed} --managers ${managers} --duration ${options.durationS}${options.iterations === undefined ? '' : ` --iterations ${options.iterations}`}`,
  };
}

function counts(record: Record<string, number>): string {
  return Object.entries(record)
    .sort((a, b) => b[1] - a[1])
    .map(([code, n]) => `${code} ${n}`)
    .join(', ');
}

/** The summary for people: counts, then each distinct failure with what reproduces it. */
export function formatSummary(summary: FuzzSummary): string {
  const lines: string[] = [];
  const rate = summary.durationS > 0 ? Math.round(summary.iterations / summary.durationS) : 0;
  lines.push(
    `fuzz: seed ${summary.seed}, ${summary.managers} manager(s), ${summary.durationS} s, ${summary.iterations} iterations (${rate}/s), ${summary.methods.length} methods, ${summary.checks} liveness checks`,
  );
  lines.push(`status codes: ${counts(summary.codes)}`);
  lines.push(`payloads: ${counts(summary.byPayload)}`);
  lines.push('by caller:');
  for (const caller of CALLERS)
    if (summary.byCaller[caller] !== undefined)
      lines.push(`  ${caller.padEnd(15)} ${counts(summary.byCaller[caller]!)}`);
  lines.push('by method:');
  for (const method of summary.methods)
    lines.push(
      `  ${method.padEnd(44)} ${summary.byMethod[method] === undefined ? '(not drawn)' : counts(summary.byMethod[method]!)}`,
    );
  if (summary.slowest !== null)
    lines.push(
      `slowest answer: ${summary.slowest.method} as ${summary.slowest.caller}, ${summary.slowest.ms} ms (iteration ${summary.slowest.iteration})`,
    );
  if (summary.ok) {
    lines.push('failures: none');
  } else {
    lines.push(`failures: ${summary.failureCount} (${summary.failures.length} distinct)`);
    for (const f of summary.failures) {
      const who =
        f.method === undefined
          ? f.kind
          : `${f.method}${f.caller === undefined ? '' : ` as ${f.caller}`}${f.manager === undefined ? '' : ` on manager ${f.manager}`}`;
      lines.push(`  - iteration ${f.iteration}: ${who}${f.count > 1 ? ` (${f.count} times)` : ''}: ${f.reason}`);
      if (f.payload !== undefined)
        lines.push(
          `    payload: ${f.payload.kind}, ${f.payload.bytes} bytes (${f.payload.how}); hex ${f.payload.hexPrefix}${f.payload.bytes > 64 ? '...' : ''}`,
        );
    }
  }
  lines.push(`${summary.ok ? 'ok' : 'FAILED'}; reproduce with --seed ${summary.seed}: ${summary.reproduce}`);
  return lines.join('\n');
}
