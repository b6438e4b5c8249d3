/**
 * The floor under a catch-up's cost to the writes on this machine: what the bare parts of any
 * catch-up by a Node process do to a cluster's write p99 while they run beside it. Two plain Node
 * processes (catch-up-floor-peer.mjs) move the secrets' names and values, and nothing else (no
 * sealing, no Raft, no gRPC), from one LevelDB to a fresh one. The serving one stands for the
 * leader: started before the timing, it reads the records in pages and streams them in chunks of
 * 1 MiB over node:http2 with mutual TLS. The pulling one stands for the new member: spawned inside
 * the timing (Node's own start is part of any Node member's catch-up), it connects, writes the
 * records in chained batches (the last synced) and reports. On two cores shared with three
 * members and a load generator, that work alone competes with the writes. The scale bench runs it
 * beside each system under the same writes as its catch-up rounds, from three members.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createCa, issueCertificate } from '../../src/crypto/pki.ts';
import { cpuSeconds } from './load.ts';

const PEER = fileURLToPath(new URL('./catch-up-floor-peer.mjs', import.meta.url));
/** The longest a fill, a start or a move may take (the scale bench bounds its loads by it too). */
export const FLOOR_STEP_MS_MAX = 1_800_000;
const EXIT_WAIT_MS_MAX = 10_000;

/** A move started: settles when the new member's process has written every record. */
export interface FloorMove {
  readonly done: Promise<{ readonly moveMs: number; readonly cpuSeconds: number }>;
}

const running = (child: ChildProcess): boolean => child.exitCode === null && child.signalCode === null;

/** Kills `child` by PID if it still runs, and waits (bounded) until it has gone. */
async function killed(child: ChildProcess): Promise<void> {
  if (!running(child) || child.pid === undefined) return;
  const exited = once(child, 'exit');
  try {
    process.kill(child.pid, 'SIGKILL');
  } catch {
    return; // gone already
  }
  await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, EXIT_WAIT_MS_MAX).unref())]);
}

/** Waits for a line of `child`'s output that starts with `prefix`; its words after the prefix. */
function lineOf(child: ChildProcess, prefix: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    const timer = setTimeout(
      () => fail(new Error(`no "${prefix}" from the floor's ${child.spawnargs[2]} in ${FLOOR_STEP_MS_MAX} ms`)),
      FLOOR_STEP_MS_MAX,
    );
    const fail = (error: Error): void => {
      clearTimeout(timer);
      lines.close();
      reject(error);
    };
    child.once('exit', (code, signal) =>
      fail(new Error(`the floor's ${child.spawnargs[2]} exited (${code ?? signal}) before "${prefix}"`)),
    );
    lines.on('line', (line) => {
      if (!line.startsWith(`${prefix} `) && line !== prefix) return;
      clearTimeout(timer);
      lines.close();
      resolve(line.slice(prefix.length).trim().split(' ').filter(Boolean));
    });
  });
}

/** A peer process; it exits by itself when this process's end of its stdin closes (a bench that died). */
function peer(args: string[]): ChildProcess {
  return spawn(process.execPath, [PEER, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
}

export class CatchUpFloor {
  readonly #dir: string;
  readonly #source: string;
  readonly secrets: number;

  private constructor(dir: string, secrets: number) {
    this.#dir = dir;
    this.#source = join(dir, 'source');
    this.secrets = secrets;
  }

  /** Writes the records the moves send (`secrets` names with 256 random bytes each) and the TLS files. */
  static async prepare(secrets: number): Promise<CatchUpFloor> {
    const dir = mkdtempSync(join(tmpdir(), 'coffer-catch-up-floor-'));
    try {
      const nowMs = Date.now();
      const ca = createCa('bench-catch-up-floor', nowMs);
      const clusterId = 'bench-catch-up-floor';
      const server = issueCertificate(ca, { id: 'floor-server', role: 'manager', clusterId, nowMs });
      const client = issueCertificate(ca, { id: 'floor-puller', role: 'manager', clusterId, nowMs });
      writeFileSync(join(dir, 'ca.crt'), ca.certPem);
      writeFileSync(join(dir, 'server.crt'), server.certPem);
      writeFileSync(join(dir, 'server.key'), server.keyPem, { mode: 0o600 });
      writeFileSync(join(dir, 'client.crt'), client.certPem);
      writeFileSync(join(dir, 'client.key'), client.keyPem, { mode: 0o600 });
      const floor = new CatchUpFloor(dir, secrets);
      const filler = peer(['fill', floor.#source, String(secrets)]);
      try {
        await lineOf(filler, 'filled');
      } finally {
        await killed(filler);
      }
      return floor;
    } catch (error) {
      rmSync(dir, { recursive: true, force: true });
      throw error;
    }
  }

  /**
   * Starts the serving process (the leader's part; its start is not timed); `go()` then spawns
   * the pulling one (the new member) and times it from its spawn until it has written every
   * record. Both processes are killed by PID, and waited for, by `stop()`; call it on every path.
   */
  async ready(): Promise<{ go(): FloorMove; stop(): Promise<void> }> {
    const into = mkdtempSync(join(this.#dir, 'move-'));
    const processes: ChildProcess[] = [];
    let stopping: Promise<void> | null = null;
    const stop = (): Promise<void> =>
      (stopping ??= (async () => {
        for (const child of processes) await killed(child);
        rmSync(into, { recursive: true, force: true });
      })());
    try {
      for (const name of ['ca.crt', 'server.crt', 'server.key', 'client.crt', 'client.key'])
        copyFileSync(join(this.#dir, name), join(into, name));
      const server = peer(['serve', this.#source, into]);
      processes.push(server);
      const [port] = await lineOf(server, 'port');
      const go = (): FloorMove => {
        const serverCpuBefore = cpuSeconds(server.pid);
        const startedAt = performance.now();
        const puller = peer(['pull', into, port!]);
        processes.push(puller);
        const done = lineOf(puller, 'pulled').then(([records]) => {
          const moveMs = performance.now() - startedAt;
          if (Number(records) !== this.secrets)
            throw new Error(`the floor moved ${records} records of ${this.secrets}`);
          return { moveMs, cpuSeconds: cpuSeconds(server.pid) - serverCpuBefore + cpuSeconds(puller.pid) };
        });
        return { done };
      };
      return { go, stop };
    } catch (error) {
      await stop();
      throw error;
    }
  }

  remove(): void {
    rmSync(this.#dir, { recursive: true, force: true });
  }
}
