import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, createWriteStream, linkSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { CLI_ARGV } from '../processes/processes.ts';

/**
 * docker compose without Docker: each service of a compose file runs as a local process, its
 * command after the image's entrypoint (`coffer`, replaced by the CLI run through tsx), with its
 * environment, its volumes and secrets mapped to directories and files under a temporary
 * directory, and its hostname (and its own 0.0.0.0, 127.0.0.1, localhost) mapped to a loopback
 * address of its own, as if it had its own network namespace. Services start as Compose starts
 * them: each as soon as its depends_on conditions hold, all at once otherwise. A published port is
 * a TCP forwarder on HOST_ADDRESS. No restart policy is emulated: a correct file brings the
 * cluster up without a crash, so a long-running service that exits fails the run.
 *
 * Users, when the tests run as root: every process runs as the image's USER (uid 1000 for node),
 * as in a container; a named volume starts out owned by that user (the Dockerfile chowns /data
 * and /shared, and Docker fills a new volume from the image); a secret is a hard link to the
 * file, so it shows the host file's owner and mode as compose's bind mount does, whatever the
 * host directory's permissions. Run as another user, the harness cannot switch, and every
 * process runs as that user.
 */

export const REPO = fileURLToPath(new URL('../../', import.meta.url));
/** The users of the base image (node:20-slim's /etc/passwd) a Dockerfile's USER may name. */
const IMAGE_USERS: Readonly<Record<string, { uid: number; gid: number }>> = { node: { uid: 1000, gid: 1000 } };
/** Programs of the base image the harness runs besides coffer (as `docker compose run --entrypoint`). */
const IMAGE_TOOLS = new Set(['rm', 'cat']);
/** The Docker host's address, where published ports listen (not 127.0.0.1: other tests use it). */
export const HOST_ADDRESS = '127.0.0.2';
const OWN_HOSTS = new Set(['0.0.0.0', '127.0.0.1', 'localhost']);

type Condition = 'service_started' | 'service_healthy' | 'service_completed_successfully';

export interface ComposeService {
  readonly name: string;
  readonly address: string;
  readonly command: string[];
  readonly environment: Record<string, string>;
  readonly healthcheck: { command: string[]; intervalMs: number; timeoutMs: number; startPeriodMs: number } | null;
  readonly dependsOn: ReadonlyMap<string, Condition>;
  readonly oneShot: boolean;
  readonly restart: string;
  /** Published "host:container" port pairs. */
  readonly ports: ReadonlyArray<{ published: number; target: number }>;
  /** Container path -> local path, for volumes and secrets. */
  readonly mounts: ReadonlyMap<string, string>;
  /** Container paths mounted read-only (`:ro`). */
  readonly readOnly: ReadonlySet<string>;
  /** Local path of each secret as this service sees it -> the host file it is (a hard link, made at start). */
  readonly secretLinks: ReadonlyMap<string, string>;
  readonly secrets: readonly string[];
  /** The profiles that enable it (none: always enabled). */
  readonly profiles: readonly string[];
  /** Rewrites a container argument (a path under a mount, a service's host:port) to the local one. */
  readonly rewrite: (arg: string) => string;
  /** argv for a command run in this service's container: `coffer` or a tool of the image. */
  readonly argv: (command: readonly string[]) => string[];
  /** As written in the file, before any rewriting (for checks on what the file says). */
  readonly raw: { command: string[]; environment: Record<string, string>; healthcheck: string[] | null };
}

export interface ComposeModel {
  /** The services of the active profiles: what `up` starts. */
  readonly services: ReadonlyMap<string, ComposeService>;
  /** Every service of the file, for `run` (which enables the profile of the service it names). */
  readonly allServices: ReadonlyMap<string, ComposeService>;
  /** The directory the compose file is moved to: volumes, secrets, logs. */
  readonly root: string;
  /** The Dockerfile's USER as uid and gid, or null if it names none (root). */
  readonly user: { readonly uid: number; readonly gid: number } | null;
  /** Secret name -> local file. */
  readonly secretFiles: ReadonlyMap<string, string>;
  readonly entrypoint: string[];
  /** Named volume -> local directory. */
  readonly volumeDirs: ReadonlyMap<string, string>;
}

/** The Dockerfile's ENTRYPOINT (exec form); the harness knows how to run `coffer` only. */
export function dockerfileEntrypoint(dockerfile: string): string[] {
  const line = readFileSync(dockerfile, 'utf8')
    .split('\n')
    .find((l) => /^ENTRYPOINT\s/.test(l));
  if (line === undefined) throw new Error(`${dockerfile} has no ENTRYPOINT`);
  return JSON.parse(line.replace(/^ENTRYPOINT\s+/, '')) as string[];
}

/** The Dockerfile's USER, as uid and gid (a name the base image has, or numbers); null for none. */
export function dockerfileUser(dockerfile: string): { uid: number; gid: number } | null {
  const lines = readFileSync(dockerfile, 'utf8')
    .split('\n')
    .filter((l) => /^USER\s/.test(l));
  const user = lines
    .at(-1)
    ?.replace(/^USER\s+/, '')
    .trim();
  if (user === undefined || user === 'root' || user === '0') return null;
  const known = IMAGE_USERS[user];
  if (known !== undefined) return known;
  const numeric = /^(\d+)(?::(\d+))?$/.exec(user);
  if (numeric === null) throw new Error(`USER ${user}: the harness knows ${Object.keys(IMAGE_USERS).join(', ')} only`);
  return { uid: Number(numeric[1]), gid: Number(numeric[2] ?? numeric[1]) };
}

function durationMs(value: unknown, fallbackMs: number): number {
  if (value === undefined) return fallbackMs;
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(String(value));
  if (match === null) throw new Error(`"${String(value)}" is not a duration this harness reads (like 10s)`);
  return Number(match[1]) * { ms: 1, s: 1000, m: 60_000 }[match[2] as 'ms' | 's' | 'm'];
}

/**
 * Reads a compose file (its text, and the directory it is in for build contexts) into what the
 * harness runs; volumes and relative paths under `root`.
 */
export function loadCompose(
  source: { text: string; dir: string },
  root: string,
  options: { profiles?: readonly string[]; overrides?: readonly string[] } = {},
): ComposeModel {
  const doc = parse(source.text, { merge: true }) as ComposeDocument;
  for (const text of options.overrides ?? [])
    mergeOverride(doc, parse(text, { merge: true }) as Partial<ComposeDocument>);
  const profiles = new Set(options.profiles ?? []);
  const secretFiles = new Map<string, string>();
  for (const [name, secret] of Object.entries(doc.secrets ?? {})) {
    if (typeof secret?.file !== 'string') throw new Error(`secret ${name} has no file`);
    // Relative to the compose file's directory, which the harness moves to `root`.
    secretFiles.set(name, isAbsolute(secret.file) ? secret.file : resolve(root, secret.file));
  }
  const volumeDirs = new Map(Object.keys(doc.volumes ?? {}).map((name) => [name, join(root, 'volumes', name)]));
  const all = Object.keys(doc.services);
  const names = all.filter((name) => {
    const p = doc.services[name]!['profiles'] as string[] | undefined;
    return p === undefined || p.some((x) => profiles.has(x));
  });
  const addressOf = new Map<string, string>();
  Object.keys(doc.services).forEach((name, k) => {
    addressOf.set(name, `127.0.0.${11 + k}`);
    const hostname = doc.services[name]!['hostname'];
    if (typeof hostname === 'string') addressOf.set(hostname, `127.0.0.${11 + k}`);
  });
  const dockerfile = resolve(
    source.dir,
    (
      (doc.services[names[0]!]!['build'] as { context: string; dockerfile: string } | undefined) ?? {
        context: '.',
        dockerfile: 'Dockerfile',
      }
    ).context,
    (doc.services[names[0]!]!['build'] as { dockerfile?: string } | undefined)?.dockerfile ?? 'Dockerfile',
  );
  const entrypoint = dockerfileEntrypoint(dockerfile);
  const user = dockerfileUser(dockerfile);
  const allServices = new Map<string, ComposeService>();
  for (const name of all) {
    const s = doc.services[name]!;
    const own = addressOf.get(name)!;
    const mounts = new Map<string, string>();
    const readOnly = new Set<string>();
    const secretLinks = new Map<string, string>();
    for (const volume of (s['volumes'] as string[] | undefined) ?? []) {
      const [source, target, mode] = volume.split(':') as [string, string, string | undefined];
      if (mode === 'ro') readOnly.add(target);
      else if (mode !== undefined && mode !== 'rw')
        throw new Error(`service ${name}: volume ${volume}: the harness reads ro and rw only`);
      if (source.startsWith('.') || source.startsWith('/')) mounts.set(target, resolve(root, source));
      else {
        const dir = volumeDirs.get(source);
        if (dir === undefined)
          throw new Error(`service ${name} mounts volume ${source}, which is not declared under volumes:`);
        mounts.set(target, dir);
      }
    }
    const secrets: string[] = [];
    for (const secret of (s['secrets'] as Array<string | { source: string; target?: string }> | undefined) ?? []) {
      const source = typeof secret === 'string' ? secret : secret.source;
      const target =
        typeof secret === 'string' || secret.target === undefined
          ? `/run/secrets/${source}`
          : secret.target.startsWith('/')
            ? secret.target
            : `/run/secrets/${secret.target}`;
      const local = secretFiles.get(source);
      if (local === undefined)
        throw new Error(`service ${name} uses secret ${source}, which is not declared under secrets:`);
      // The service's own view of the file (a bind mount in compose), linked when it starts.
      const seen = join(root, 'mounts', name, target);
      mounts.set(target, seen);
      secretLinks.set(seen, local);
      secrets.push(source);
    }
    const rewrite = (arg: string): string => {
      const eq = /^(--[^=]+=)(.*)$/.exec(arg);
      if (eq !== null) return eq[1]! + rewrite(eq[2]!);
      // A list of managers (COFFER_ADDR=m1:7400,m2:7400): each one.
      if (arg.includes(',') && arg.split(',').every((part) => /^[^:/,]+:\d+$/.test(part)))
        return arg.split(',').map(rewrite).join(',');
      const hostPort = /^([^:/]+):(\d+)$/.exec(arg);
      if (hostPort !== null) {
        const host = hostPort[1]!;
        const mapped = OWN_HOSTS.has(host) ? own : addressOf.get(host);
        if (mapped === undefined) throw new Error(`service ${name}: ${arg} names no service of this file`);
        return `${mapped}:${hostPort[2]}`;
      }
      let best = '';
      for (const target of mounts.keys())
        if ((arg === target || arg.startsWith(`${target}/`)) && target.length > best.length) best = target;
      return best === '' ? arg : mounts.get(best)! + arg.slice(best.length);
    };
    const replaceEntrypoint = (argv: readonly string[]): string[] => {
      if (argv[0] !== undefined && IMAGE_TOOLS.has(argv[0])) return [argv[0], ...argv.slice(1)];
      if (argv[0] !== 'coffer')
        throw new Error(
          `service ${name}: the harness runs the coffer command and ${[...IMAGE_TOOLS].join(', ')} only, not ${argv[0]}`,
        );
      return [process.execPath, ...CLI_ARGV, ...argv.slice(1)];
    };
    /** The local argv of a command in this container: the program, then each argument rewritten. */
    const argv = (command: readonly string[]): string[] => {
      const local = replaceEntrypoint(command);
      const fixed = local.length - (command.length - 1);
      return local.map((a, k) => (k < fixed ? a : rewrite(a)));
    };
    const rawCommand = [
      ...((s['entrypoint'] as string[] | undefined) ?? entrypoint),
      ...((s['command'] as string[] | undefined) ?? []),
    ];
    if (typeof s['command'] === 'string' || typeof s['entrypoint'] === 'string')
      throw new Error(`service ${name}: write command and entrypoint in exec form (a list)`);
    const rawEnv: Record<string, string> = {};
    const env = s['environment'];
    if (Array.isArray(env))
      for (const pair of env as string[]) rawEnv[pair.split('=')[0]!] = pair.slice(pair.indexOf('=') + 1);
    else if (env !== undefined && env !== null)
      for (const [k, v] of Object.entries(env as Record<string, unknown>)) rawEnv[k] = String(v ?? '');
    const health = s['healthcheck'] as
      | { test: string[]; interval?: string; timeout?: string; start_period?: string; start_interval?: string }
      | undefined;
    let healthcheck: ComposeService['healthcheck'] = null;
    if (health !== undefined) {
      if (!Array.isArray(health.test) || health.test[0] !== 'CMD')
        throw new Error(`service ${name}: the healthcheck test must be ["CMD", ...]`);
      healthcheck = {
        command: argv(health.test.slice(1)),
        intervalMs: durationMs(health.start_interval ?? health.interval, 5000),
        timeoutMs: durationMs(health.timeout, 30_000),
        startPeriodMs: durationMs(health.start_period, 0),
      };
    }
    const dependsOn = new Map<string, Condition>();
    const deps = s['depends_on'];
    if (Array.isArray(deps)) for (const dep of deps as string[]) dependsOn.set(dep, 'service_started');
    else
      for (const [dep, how] of Object.entries((deps ?? {}) as Record<string, { condition?: Condition }>))
        dependsOn.set(dep, how.condition ?? 'service_started');
    for (const dep of dependsOn.keys())
      if (names.includes(name) && !names.includes(dep))
        throw new Error(`service ${name} depends on ${dep}, which is not a service (of the active profiles)`);
    const restart = String(s['restart'] ?? 'no');
    allServices.set(name, {
      name,
      address: own,
      command: argv(rawCommand),
      environment: Object.fromEntries(Object.entries(rawEnv).map(([k, v]) => [k, rewrite(v)])),
      healthcheck,
      dependsOn,
      oneShot: restart === 'no',
      restart,
      ports: ((s['ports'] as string[] | undefined) ?? []).map((p) => {
        const [published, target] = String(p).split(':').map(Number);
        return { published: published!, target: target! };
      }),
      mounts,
      readOnly,
      secretLinks,
      secrets,
      profiles: (s['profiles'] as string[] | undefined) ?? [],
      rewrite,
      argv,
      raw: { command: rawCommand, environment: rawEnv, healthcheck: health?.test ?? null },
    });
  }
  const services = new Map(names.map((name) => [name, allServices.get(name)!]));
  checkAcyclic(services);
  return { services, allServices, root, user, secretFiles, entrypoint, volumeDirs };
}

interface ComposeDocument {
  services: Record<string, Record<string, unknown>>;
  volumes?: Record<string, unknown>;
  secrets?: Record<string, { file?: string }>;
}

/**
 * `docker compose -f base -f override`, for what our files use: an override's service keys
 * replace the base's (command, entrypoint, healthcheck, ...), except secrets, volumes and ports,
 * whose lists are joined; top-level secrets and volumes are merged by name.
 */
function mergeOverride(base: ComposeDocument, override: Partial<ComposeDocument>): void {
  for (const [name, service] of Object.entries(override.services ?? {})) {
    const into = base.services[name];
    if (into === undefined) {
      base.services[name] = service;
      continue;
    }
    for (const [key, value] of Object.entries(service)) {
      if (
        (key === 'secrets' || key === 'volumes' || key === 'ports') &&
        Array.isArray(into[key]) &&
        Array.isArray(value)
      ) {
        into[key] = [
          ...(into[key] as unknown[]),
          ...(value as unknown[]).filter(
            (v) => !(into[key] as unknown[]).some((w) => JSON.stringify(w) === JSON.stringify(v)),
          ),
        ];
      } else into[key] = value;
    }
  }
  base.secrets = { ...base.secrets, ...override.secrets };
  base.volumes = { ...base.volumes, ...override.volumes };
}

function checkAcyclic(services: ReadonlyMap<string, ComposeService>): void {
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string, path: string[]): void => {
    if (state.get(name) === 'done') return;
    if (state.get(name) === 'visiting') throw new Error(`depends_on has a cycle: ${[...path, name].join(' -> ')}`);
    state.set(name, 'visiting');
    for (const dep of services.get(name)!.dependsOn.keys()) visit(dep, [...path, name]);
    state.set(name, 'done');
  };
  for (const name of services.keys()) visit(name, []);
}

/** The running services of one `up`, tracked by PID; `down` kills every one. */
export class ComposeRun {
  readonly #children = new Map<string, ChildProcess>();
  readonly #exits = new Map<string, Promise<number | null>>();
  readonly #forwarders: Server[] = [];
  /** A long-running service that exited: the run has failed. */
  #died: Error | null = null;
  #down = false;
  /** Long-running services stopped on purpose (docker compose stop NAME): their exit is no failure. */
  readonly #stopped = new Set<string>();

  constructor(
    readonly model: ComposeModel,
    readonly logDir: string,
  ) {}

  /** The uid and gid the services run as: the image's USER when the tests run as root, else none (this process's). */
  get user(): { readonly uid: number; readonly gid: number } | null {
    return this.model.user !== null && process.getuid?.() === 0 ? this.model.user : null;
  }

  /** A named volume as Docker makes it: empty, owned by the image's user (the Dockerfile chowns /data and /shared). */
  #makeVolume(dir: string): void {
    // The volumes' parent as the Docker host has it (/var/lib/docker/volumes): anyone may pass.
    mkdirSync(dirname(dir), { recursive: true, mode: 0o755 });
    mkdirSync(dir, { mode: 0o700 });
    const user = this.user;
    if (user !== null) chownSync(dir, user.uid, user.gid);
  }

  /** The environment and the user a process of `service` gets. */
  #spawnOptions(service: ComposeService): { env: Record<string, string>; uid?: number; gid?: number } {
    const user = this.user;
    const env: Record<string, string> = {
      PATH: process.env['PATH'] ?? '/usr/bin:/bin',
      HOME: user === null ? (process.env['HOME'] ?? '/tmp') : join(this.model.root, 'home'),
      ...service.environment,
    };
    return user === null ? { env } : { env, uid: user.uid, gid: user.gid };
  }

  /** Compose's bind mount of each secret: a hard link shows the host file's own owner and mode. */
  #mountSecrets(service: ComposeService): void {
    for (const [seen, file] of service.secretLinks) {
      let source: ReturnType<typeof statSync>;
      try {
        source = statSync(file);
      } catch {
        throw new Error(`service ${service.name}: the secret file ${file} does not exist`);
      }
      mkdirSync(dirname(seen), { recursive: true, mode: 0o755 });
      try {
        if (statSync(seen).ino === source.ino) continue;
        rmSync(seen);
      } catch {}
      linkSync(file, seen);
    }
  }

  /** What the services need before any starts: volumes, logs, a home, and (as root) a path the image's user can walk. */
  #prepare(): void {
    mkdirSync(this.logDir, { recursive: true });
    const user = this.user;
    if (user !== null) {
      chmodSync(this.model.root, 0o755);
      mkdirSync(join(this.model.root, 'home'), { recursive: true, mode: 0o700 });
      chownSync(join(this.model.root, 'home'), user.uid, user.gid);
    }
    for (const dir of this.model.volumeDirs.values()) {
      let exists = true;
      try {
        statSync(dir);
      } catch {
        exists = false;
      }
      if (!exists) this.#makeVolume(dir);
    }
  }

  /**
   * Starts every service as Compose would, and resolves once each has started and each one-shot
   * has finished; with `wait`, also once every healthcheck passes (docker compose up --wait).
   */
  async up(timeoutMs: number, options: { wait?: boolean } = {}): Promise<void> {
    this.#prepare();
    const deadline = Date.now() + timeoutMs;
    const started = new Map<string, Promise<void>>();
    const start = (name: string): Promise<void> => {
      let promise = started.get(name);
      if (promise === undefined) {
        const service = this.model.services.get(name)!;
        promise = (async () => {
          await Promise.all(
            [...service.dependsOn].map(async ([dep, condition]) => {
              await start(dep);
              if (condition === 'service_completed_successfully') await this.#completed(dep, deadline);
              if (condition === 'service_healthy') await this.#healthy(dep, deadline);
            }),
          );
          this.#start(service);
        })();
        started.set(name, promise);
      }
      return promise;
    };
    await Promise.all([...this.model.services.keys()].map(start));
    for (const service of this.model.services.values())
      if (service.oneShot) await this.#completed(service.name, deadline);
    if (options.wait === true)
      for (const service of this.model.services.values())
        if (service.healthcheck !== null) await this.#healthy(service.name, deadline);
    this.#check();
  }

  #start(service: ComposeService): void {
    this.#check();
    this.#stopped.delete(service.name);
    this.#mountSecrets(service);
    const child = spawn(service.command[0]!, service.command.slice(1), {
      cwd: REPO,
      ...this.#spawnOptions(service),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const log = createWriteStream(join(this.logDir, `${service.name}.log`), { flags: 'a' });
    child.stdout!.pipe(log);
    child.stderr!.pipe(log);
    this.#children.set(service.name, child);
    this.#exits.set(service.name, new Promise((done) => child.once('exit', (code) => done(code))));
    child.once('exit', (code, signal) => {
      if (
        !service.oneShot &&
        !this.#down &&
        !this.#stopped.has(service.name) &&
        this.#children.get(service.name) === child
      ) {
        this.#died ??= new Error(
          `service ${service.name} exited (code ${code}, signal ${signal}); its log:\n${this.log(service.name).slice(-3000)}`,
        );
      }
    });
    // Published once per run: a service started again keeps its forwarder.
    if (!this.#published.has(service.name))
      for (const port of service.ports) this.#forward(port.published, service.address, port.target);
    this.#published.add(service.name);
  }

  readonly #published = new Set<string>();

  /** docker compose stop NAME: SIGTERM, SIGKILL after a grace period. */
  async stop(name: string, graceMs = 5000): Promise<void> {
    this.#stopped.add(name);
    const child = this.#children.get(name);
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const gone = this.#exits.get(name)!;
    process.kill(child.pid!, 'SIGTERM');
    const timer = setTimeout(
      () => child.exitCode === null && child.signalCode === null && process.kill(child.pid!, 'SIGKILL'),
      graceMs,
    );
    await gone;
    clearTimeout(timer);
  }

  /** docker compose up -d NAME, for a service of this run that was stopped (its dependencies are up). */
  start(name: string): void {
    if (this.running(name)) throw new Error(`service ${name} is running`);
    this.#start(this.model.services.get(name)!);
  }

  /** docker volume rm: the volume is gone, and the next start of a service that mounts it gets a new, empty one. */
  removeVolume(volume: string): void {
    const dir = this.model.volumeDirs.get(volume);
    if (dir === undefined) throw new Error(`no volume ${volume}`);
    for (const [name, service] of this.model.services)
      if (this.running(name) && [...service.mounts.values()].includes(dir))
        throw new Error(`volume ${volume} is in use by ${name}`);
    rmSync(dir, { recursive: true, force: true });
    this.#makeVolume(dir);
  }

  /**
   * docker compose run --rm [--entrypoint ENTRYPOINT] NAME [COMMAND...]: one process in a new
   * container of the service (of any profile: naming it enables its profile), with its
   * environment, volumes and user; its output returned, not logged.
   */
  runOnce(
    name: string,
    command?: readonly string[],
    options: { entrypoint?: readonly string[]; timeoutMs?: number } = {},
  ): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const service = this.model.allServices.get(name);
    if (service === undefined) throw new Error(`no service ${name}`);
    this.#prepare();
    this.#mountSecrets(service);
    const argv = service.argv([
      ...(options.entrypoint ?? service.raw.command.slice(0, this.model.entrypoint.length)),
      ...(command ?? service.raw.command.slice(this.model.entrypoint.length)),
    ]);
    return new Promise((done) => {
      const child = spawn(argv[0]!, argv.slice(1), {
        cwd: REPO,
        ...this.#spawnOptions(service),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      const timer = setTimeout(() => process.kill(child.pid!, 'SIGKILL'), options.timeoutMs ?? 60_000);
      child.once('close', (code) => {
        clearTimeout(timer);
        done({ code, stdout, stderr });
      });
    });
  }

  #forward(published: number, address: string, target: number): void {
    const server = createServer((socket) => {
      const upstream = createConnection({ host: address, port: target });
      socket.pipe(upstream).pipe(socket);
      const close = (): void => {
        socket.destroy();
        upstream.destroy();
      };
      socket.on('error', close);
      upstream.on('error', close);
    });
    server.on(
      'error',
      (error) => (this.#died ??= new Error(`cannot publish port ${published} on ${HOST_ADDRESS}: ${error.message}`)),
    );
    server.listen(published, HOST_ADDRESS);
    this.#forwarders.push(server);
  }

  #check(): void {
    if (this.#died !== null) throw this.#died;
  }

  async #completed(name: string, deadline: number): Promise<void> {
    const exit = this.#exits.get(name)!;
    const code = await Promise.race([
      exit,
      new Promise<'timeout'>((done) => setTimeout(() => done('timeout'), Math.max(0, deadline - Date.now())).unref()),
    ]);
    if (code === 'timeout')
      throw new Error(`service ${name} did not complete in time; its log:\n${this.log(name).slice(-3000)}`);
    if (code !== 0)
      throw new Error(`service ${name} exited with code ${code}, not 0; its log:\n${this.log(name).slice(-3000)}`);
  }

  /** Waits until a service's healthcheck passes; fails at once if a service has died. */
  waitHealthy(name: string, timeoutMs: number): Promise<void> {
    return this.#healthy(name, Date.now() + timeoutMs);
  }

  async #healthy(name: string, deadline: number): Promise<void> {
    const check = this.model.services.get(name)!.healthcheck;
    if (check === null) throw new Error(`service_healthy on ${name}, which has no healthcheck`);
    let last = '';
    for (;;) {
      this.#check();
      const result = await this.healthcheck(name);
      if (result.code === 0) return;
      last = result.output;
      if (Date.now() > deadline)
        throw new Error(`service ${name} never became healthy: ${last}\nits log:\n${this.log(name).slice(-3000)}`);
      await new Promise((done) => setTimeout(done, check.intervalMs));
    }
  }

  /** Runs a service's healthcheck command once, with its timeout. */
  healthcheck(name: string): Promise<{ code: number | null; output: string }> {
    const service = this.model.services.get(name)!;
    const check = service.healthcheck!;
    return new Promise((done) => {
      const child = spawn(check.command[0]!, check.command.slice(1), {
        cwd: REPO,
        ...this.#spawnOptions(service),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let output = '';
      child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
      const timer = setTimeout(() => process.kill(child.pid!, 'SIGKILL'), check.timeoutMs);
      child.once('close', (code) => {
        clearTimeout(timer);
        done({ code, output: output.trim() });
      });
    });
  }

  log(name: string): string {
    try {
      return readFileSync(join(this.logDir, `${name}.log`), 'utf8');
    } catch {
      return '';
    }
  }

  /** Whether a service's process is running now. */
  running(name: string): boolean {
    const child = this.#children.get(name);
    return child !== undefined && child.exitCode === null && child.signalCode === null;
  }

  /** docker compose down: SIGTERM to every process by PID, SIGKILL after a grace period; ports closed. */
  async down(graceMs = 5000): Promise<void> {
    this.#down = true;
    for (const server of this.#forwarders) server.close();
    this.#forwarders.length = 0;
    await Promise.all(
      [...this.#children.entries()].map(async ([name, child]) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const gone = this.#exits.get(name)!;
        process.kill(child.pid!, 'SIGTERM');
        const timer = setTimeout(
          () => child.exitCode === null && child.signalCode === null && process.kill(child.pid!, 'SIGKILL'),
          graceMs,
        );
        await gone;
        clearTimeout(timer);
      }),
    );
    this.#children.clear();
  }
}
