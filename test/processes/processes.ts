import type * as grpc from '@grpc/grpc-js';
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { services } from '../../src/transport/proto.ts';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials } from '../../src/transport/tls.ts';

const CLI = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
/**
 * The CLI as `npm run build` makes it: one bundled module, as the coffer bin and the image run it.
 * COFFER_COMPILED_CLI names another (the CPU profile bench runs dist/cli/main.js, a module per
 * source, to tell a request's parts apart by file).
 */
export const COMPILED_CLI = fileURLToPath(new URL('../../dist/run/coffer.mjs', import.meta.url));
const compiledCli = (): string => process.env['COFFER_COMPILED_CLI'] ?? COMPILED_CLI;

/**
 * Whether tests start the CLI compiled: scripts/run-tests.mjs (npm test) builds dist/ first and
 * sets COFFER_TEST_COMPILED=1, so a process start costs about 0.5 s of CPU instead of 1.7 s (tsx
 * compiles the sources at every start; the suite starts a few hundred processes). A test file run
 * by hand runs the sources.
 */
export const TEST_COMPILED = process.env['COFFER_TEST_COMPILED'] === '1';
/** node's arguments that start the CLI, as the tests run it. */
export const CLI_ARGV: readonly string[] = TEST_COMPILED ? [COMPILED_CLI] : ['--import', 'tsx', CLI];

/** A free TCP port on 127.0.0.1 (bound and released; fine on loopback in a test). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Runs `coffer ARGS` to completion, with extra environment variables if given. */
export function coffer(
  args: string[],
  input?: string,
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...CLI_ARGV, ...args], {
      env: { ...process.env, ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdin.end(input ?? '');
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Long-running coffer processes, each tracked by PID and killed when the test ends. */
export class Processes {
  readonly #children = new Map<string, ChildProcess>();
  readonly #compiled: boolean;
  readonly #cli: string | null;

  /**
   * `compiled`: run the CLI compiled by `npm run build` (dist/), as an installed coffer runs, not
   * the sources through tsx (the benchmarks time process starts). `cli`: a compiled CLI of
   * another build (the pair benchmark runs a base commit's beside the working tree's).
   */
  constructor(
    readonly logDir: string,
    options: { readonly compiled?: boolean; readonly cli?: string } = {},
  ) {
    this.#cli = options.cli ?? null;
    this.#compiled = this.#cli !== null || (options.compiled ?? TEST_COMPILED);
  }

  /** Starts `coffer ARGS`; `prefix` runs it through another program that execs it (ip netns exec). */
  start(
    name: string,
    args: string[],
    prefix: readonly string[] = [],
    input = '',
    env: Readonly<Record<string, string>> = {},
  ): ChildProcess {
    // COFFER_NODE_ARGS: extra options for node (a profile: `--cpu-prof --cpu-prof-dir=DIR`).
    const nodeArgs = (process.env['COFFER_NODE_ARGS'] ?? '').split(' ').filter((a) => a !== '');
    const node = [process.execPath, ...nodeArgs];
    const argv = this.#compiled
      ? [...node, this.#cli ?? compiledCli(), ...args]
      : [...node, '--import', 'tsx', CLI, ...args];
    const [program, ...rest] = [...prefix, ...argv];
    const child = spawn(program!, rest, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    const log = createWriteStream(join(this.logDir, `${name}.log`), { flags: 'a' });
    child.stdout!.pipe(log);
    child.stderr!.pipe(log);
    child.stdin!.end(input);
    this.#children.set(name, child);
    return child;
  }

  log(name: string): string {
    try {
      return readFileSync(join(this.logDir, `${name}.log`), 'utf8');
    } catch {
      return '';
    }
  }

  /** kill -9, and waits for the process to be gone. */
  async kill(name: string): Promise<void> {
    const child = this.#children.get(name);
    this.#children.delete(name);
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((resolve) => child.once('exit', resolve));
    process.kill(child.pid!, 'SIGKILL');
    await gone;
  }

  /** SIGSTOP / SIGCONT: a manager that stops answering without dying. */
  signal(name: string, signal: 'SIGSTOP' | 'SIGCONT'): void {
    const child = this.#children.get(name);
    if (child !== undefined && child.exitCode === null && child.signalCode === null) process.kill(child.pid!, signal);
  }

  /** The PID of a running process (the manager itself: no shell in between). */
  pid(name: string): number | undefined {
    return this.running(name) ? this.#children.get(name)!.pid : undefined;
  }

  /** The exit status of a process that exited by itself (null: running, unknown, or killed by a signal). */
  exitCode(name: string): number | null {
    return this.#children.get(name)?.exitCode ?? null;
  }

  running(name: string): boolean {
    const child = this.#children.get(name);
    return child !== undefined && child.exitCode === null && child.signalCode === null;
  }

  async killAll(): Promise<void> {
    for (const name of this.#children.keys()) this.signal(name, 'SIGCONT');
    for (const name of [...this.#children.keys()]) await this.kill(name);
  }
}

export interface StatusReply {
  nodeId: number;
  role: string;
  leaderId: number;
  term: number;
  commitIndex: number;
  appliedIndex: number;
  voters: number[];
  learners: number[];
  keyringTerm: number;
  certificateSerial: string;
  certificateNotAfterMs: number;
  snapshotIndex: number;
  snapshotsSent: number;
  firstIndex: number;
  lastIndex: number;
  /** The voters and learners, with what this manager knows of each (a leader: their progress). */
  members: { nodeId: number; role: string; healthy: boolean; matchIndex: number; lag: number }[];
}

export type ServiceName = 'Cluster' | 'Secrets' | 'Policies' | 'Identities' | 'Audit' | 'Keys' | 'Backup' | 'Auth';

/** A client holding the admin identity made by `coffer init` (or any identity, from PEM). */
export class AdminClient {
  readonly #credentials: grpc.ChannelCredentials;
  readonly #clients = new Map<string, grpc.Client>();

  constructor(adminDir: string, clusterId: string, pem?: { caPem: string; certPem: string; keyPem: string }) {
    const read = (name: string) => readFileSync(join(adminDir, name), 'utf8');
    this.#credentials = managerChannelCredentials(
      pem ?? { caPem: read('ca.crt'), certPem: read('admin.crt'), keyPem: read('admin.key') },
      { clusterId },
    );
  }

  #client(address: string, service: ServiceName): grpc.Client {
    const key = `${address}/${service}`;
    let client = this.#clients.get(key);
    if (client === undefined) {
      client = new (services()[service].Client)(address, this.#credentials, MANAGER_CHANNEL_OPTIONS);
      this.#clients.set(key, client);
    }
    return client;
  }

  call<Response>(
    address: string,
    service: ServiceName,
    method: string,
    request: object,
    timeoutMs = 5000,
  ): Promise<Response> {
    const client = this.#client(address, service) as unknown as Record<
      string,
      (r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: Response) => void) => void
    >;
    return new Promise((resolve, reject) => {
      client[method]!.call(client, request, { deadline: Date.now() + timeoutMs }, (error, response) =>
        error === null ? resolve(response!) : reject(error),
      );
    });
  }

  status(address: string): Promise<StatusReply> {
    return this.call<StatusReply>(address, 'Cluster', 'status', {});
  }

  close(): void {
    for (const client of this.#clients.values()) client.close();
    this.#clients.clear();
  }
}

/** Polls until `probe` returns a value (not undefined), or fails after `timeoutMs`. */
export async function eventually<T>(
  what: string,
  timeoutMs: number,
  probe: () => Promise<T | undefined>,
  intervalMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline)
      throw new Error(
        `timed out waiting for ${what}${last === null ? '' : `: ${String((last as Error).message ?? last)}`}`,
      );
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
