import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { Command, InvalidArgumentError } from 'commander';
import { CofferClient } from '../client/client.ts';
import { initCluster } from '../server/bootstrap.ts';

/** What the first run made, in DIR/dev.json; later runs start the same managers. */
interface DevLayout {
  readonly managers: ReadonlyArray<{ readonly data: string; readonly listen: string }>;
  readonly adminDir: string;
}

/** How long a start may take: a first run makes keys and joins managers one by one. */
const START_TIMEOUT_MS = 120_000;
/** How long managers get to stop on SIGTERM before they are killed. */
const STOP_TIMEOUT_MS = 10_000;

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const port = (server.address() as { port: number }).port;
  await new Promise((done) => server.close(done));
  return port;
}

/**
 * One manager of the dev cluster: a `coffer server` process, its output in DIR/logs/mN.log.
 * Its IPC channel to `coffer dev` makes it stop when dev goes, even by kill -9 (see serve()).
 */
class ManagerProcess {
  #child: ChildProcess | null = null;
  #expectedExit = false;

  constructor(
    readonly name: string,
    readonly data: string,
    readonly listen: string,
    readonly logFile: string,
    readonly metricsListen: string | null,
    readonly onExit: (manager: ManagerProcess, how: string) => void,
  ) {}

  get pid(): number | null {
    return this.running ? this.#child!.pid! : null;
  }

  get running(): boolean {
    return this.#child !== null && this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /** The command line a user would type to run this manager themselves. */
  get serverArgs(): string[] {
    return ['server', '--data', this.data];
  }

  start(extraArgs: readonly string[] = []): void {
    if (this.running) return;
    const args = [
      ...this.serverArgs,
      ...extraArgs,
      ...(this.metricsListen === null ? [] : ['--metrics-listen', this.metricsListen]),
    ];
    const log = openSync(this.logFile, 'a', 0o600);
    // The same node, loader flags (tsx's, when run from sources) and entry script as this process.
    const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ...args], {
      stdio: ['ignore', log, log, 'ipc'],
      env: { ...process.env, COFFER_LOG_LEVEL: process.env['COFFER_LOG_LEVEL'] ?? 'info' },
    });
    closeSync(log);
    this.#expectedExit = false;
    this.#child = child;
    child.once('exit', (code, signal) => {
      if (!this.#expectedExit) this.onExit(this, signal === null ? `exit code ${code}` : `signal ${signal}`);
    });
  }

  /** SIGTERM, then SIGKILL after STOP_TIMEOUT_MS; resolves when the process is gone. */
  async stop(): Promise<void> {
    const child = this.#child;
    if (child === null || !this.running) return;
    this.#expectedExit = true;
    const gone = new Promise<void>((done) => child.once('exit', () => done()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await gone;
    clearTimeout(timer);
  }
}

/** Polls until `probe` answers (not undefined), or fails naming `what` and, if given, a log to read. */
async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  failed: () => string | null,
  timeoutMs = START_TIMEOUT_MS,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const why = failed();
    if (why !== null) throw new Error(`${what}: ${why}`);
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((done) => setTimeout(done, 200));
  }
}

function adminClient(layout: DevLayout, addresses: readonly string[]): CofferClient {
  const read = (name: string) => readFileSync(join(layout.adminDir, name), 'utf8');
  return new CofferClient({
    addresses,
    caPem: read('ca.crt'),
    certPem: read('admin.crt'),
    keyPem: read('admin.key'),
    deadlineMs: 2000,
  });
}

interface StatusView {
  readonly role: string;
  readonly leaderId: number;
  readonly voters: readonly number[];
}

/**
 * `coffer dev` (`npm start`): a local cluster on 127.0.0.1 whose managers are processes of their
 * own, supervised here, with the PKI and data under DIR. Made on the first run, reused after;
 * `DIR/client.env` holds the COFFER_* variables. Kill a manager (its PID is printed) and the
 * others carry on; Enter starts it again; Ctrl-C stops them all.
 */
export function devCommand(): Command {
  return new Command('dev')
    .description(
      'run a local cluster of manager processes on 127.0.0.1 (data under --dir) until Ctrl-C; Enter restarts any that stopped',
    )
    .option('--dir <dir>', 'where the cluster lives', '.coffer/dev')
    .option(
      '--managers <n>',
      'managers (on the first run)',
      (v) => {
        const n = Number(v);
        if (![1, 3, 5, 7].includes(n)) throw new InvalidArgumentError('1, 3, 5 or 7 managers');
        return n;
      },
      3,
    )
    .option(
      '--no-metrics',
      'do not serve Prometheus metrics (by default each manager serves them on a free loopback port, printed)',
    )
    .action(async (flags: { dir: string; managers: number; metrics: boolean }) => {
      const dir = resolve(flags.dir);
      const layoutFile = join(dir, 'dev.json');
      const logDir = join(dir, 'logs');
      let stopping = false;
      const onExit = (m: ManagerProcess, how: string): void => {
        if (stopping) return;
        // Code 75: the manager waited out a full disk and asks to be started again from disk,
        // as a supervisor (compose's restart policy, systemd) would.
        if (how === 'exit code 75') {
          process.stdout.write(
            `coffer dev: ${m.name} (${m.listen}) had disk space again and asked to be started again: starting it\n`,
          );
          m.start();
          return;
        }
        process.stdout.write(
          `coffer dev: ${m.name} (${m.listen}) stopped (${how}); the other managers carry on. Press Enter to start it again (its log: ${m.logFile})\n`,
        );
      };
      const managers: ManagerProcess[] = [];
      const stopAll = async (): Promise<void> => {
        stopping = true;
        await Promise.all(managers.map((m) => m.stop()));
      };
      for (const signal of ['SIGINT', 'SIGTERM'] as const)
        process.once(signal, () => void stopAll().then(() => process.exit(0)));
      const managerFor = async (k: number, data: string, listen: string): Promise<ManagerProcess> =>
        new ManagerProcess(
          `m${k + 1}`,
          data,
          listen,
          join(logDir, `m${k + 1}.log`),
          flags.metrics ? `127.0.0.1:${await freePort()}` : null,
          onExit,
        );
      const exited = (m: ManagerProcess) => (m.running ? null : `${m.name} stopped; its log: ${m.logFile}`);

      let layout: DevLayout;
      if (existsSync(layoutFile)) {
        layout = JSON.parse(readFileSync(layoutFile, 'utf8')) as DevLayout;
        mkdirSync(logDir, { recursive: true, mode: 0o700 });
        for (const [k, m] of layout.managers.entries()) managers.push(await managerFor(k, m.data, m.listen));
        for (const m of managers) m.start();
        const client = adminClient(
          layout,
          managers.map((m) => m.listen),
        );
        try {
          await waitFor(
            'a leader',
            async () => ((await client.clusterStatus()) as unknown as StatusView).leaderId || undefined,
            () => (managers.every((m) => !m.running) ? 'every manager stopped; see their logs in ' + logDir : null),
          );
        } finally {
          client.close();
        }
      } else {
        if (existsSync(join(dir, 'm1')))
          throw new Error(
            `${dir} holds a cluster whose first run did not finish (no dev.json): remove the directory and run again`,
          );
        mkdirSync(logDir, { recursive: true, mode: 0o700 });
        const planned: Array<{ data: string; listen: string }> = [];
        for (let k = 0; k < flags.managers; k++)
          planned.push({ data: join(dir, `m${k + 1}`), listen: `127.0.0.1:${await freePort()}` });
        const init = await initCluster({
          dataDir: planned[0]!.data,
          listen: planned[0]!.listen,
          adminDir: join(dir, 'admin'),
          recoveryKeyFile: join(dir, 'recovery-key'),
        });
        const tokenFile = join(dir, 'join-token');
        writeFileSync(tokenFile, `${init.joinToken}\n`, { mode: 0o600 });
        layout = { managers: planned, adminDir: init.adminDir };
        for (const [k, m] of planned.entries()) managers.push(await managerFor(k, m.data, m.listen));
        const first = managers[0]!;
        const client = adminClient(layout, [first.listen]);
        try {
          first.start();
          await waitFor(
            `${first.name} to lead`,
            async () =>
              ((await client.clusterStatus()) as unknown as StatusView).role === 'leader' ? true : undefined,
            () => exited(first),
          );
          // One at a time, as an operator would: each joins through the first and is promoted
          // once caught up, before the next asks.
          for (const [k, m] of managers.entries()) {
            if (k === 0) continue;
            m.start(['--listen', m.listen, '--join', first.listen, '--token-file', tokenFile]);
            await waitFor(
              `${m.name} to join as a voter`,
              async () =>
                ((await client.clusterStatus()) as unknown as StatusView).voters.length === k + 1 ? true : undefined,
              () => exited(m),
            );
          }
        } finally {
          client.close();
        }
        writeFileSync(layoutFile, `${JSON.stringify(layout, null, 2)}\n`);
      }
      const env = join(dir, 'client.env');
      writeFileSync(
        env,
        [
          `COFFER_ADDR=${layout.managers.map((m) => m.listen).join(',')}`,
          `COFFER_CA=${join(layout.adminDir, 'ca.crt')}`,
          `COFFER_CERT=${join(layout.adminDir, 'admin.crt')}`,
          `COFFER_KEY=${join(layout.adminDir, 'admin.key')}`,
          '',
        ].join('\n'),
      );
      process.stdout.write(
        [
          `coffer: ${managers.length} managers running (data in ${dir}):`,
          ...managers.map(
            (m) =>
              `  ${m.name}  ${m.listen}  pid ${m.pid}  log ${m.logFile}${m.metricsListen === null ? '' : `  metrics http://${m.metricsListen}/metrics`}`,
          ),
          'in another shell:',
          `  set -a; . ${env}; set +a`,
          '  echo -n hunter2 | npx coffer secret put app/db/password',
          '  npx coffer secret get app/db/password',
          // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell expansion, printed for the user to run
          '  npx coffer run --env DB_PASSWORD=app/db/password -- sh -c \'echo "got ${#DB_PASSWORD} characters"\'',
          '  npx coffer cluster status                 # who leads; then kill -9 its pid and watch the others carry on',
          `  npx coffer snapshot save backup.coffer     # restore: coffer snapshot restore --recovery-key-file ${join(dir, 'recovery-key')} ...`,
          'Enter starts any manager that stopped; Ctrl-C stops the cluster; run again to reuse it.',
          '',
        ].join('\n'),
      );
      // Enter (a line on stdin) starts again every manager that stopped.
      createInterface({ input: process.stdin }).on('line', () => {
        for (const m of managers) {
          if (m.running) continue;
          m.start();
          process.stdout.write(`coffer dev: ${m.name} (${m.listen}) started again, pid ${m.pid}\n`);
        }
      });
    });
}
