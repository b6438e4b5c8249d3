import { test } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI_ARGV, coffer, eventually } from '../processes/processes.ts';

/** `coffer dev` with its stdin open (Enter restarts managers) and its output collected. */
class DevRun {
  readonly child: ChildProcess;
  output = '';
  constructor(args: string[]) {
    this.child = spawn(process.execPath, [...CLI_ARGV, 'dev', ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stdout!.on('data', (d: Buffer) => (this.output += d.toString()));
    this.child.stderr!.on('data', (d: Buffer) => (this.output += d.toString()));
  }

  /** The managers the banner lists: name, address, PID. */
  async managers(): Promise<Array<{ name: string; address: string; pid: number; metrics: string | null }>> {
    await eventually('the dev cluster', 120_000, async () => {
      if (this.child.exitCode !== null) throw new Error(`coffer dev exited: ${this.output}`);
      return /managers running/.test(this.output) ? true : undefined;
    });
    return [...this.output.matchAll(/^ {2}(m\d) {2}(\S+) {2}pid (\d+) {2}log \S+(?: {2}metrics (\S+))?$/gm)].map(
      (m) => ({ name: m[1]!, address: m[2]!, pid: Number(m[3]), metrics: m[4] ?? null }),
    );
  }

  exited(): Promise<number | null> {
    if (this.child.exitCode !== null) return Promise.resolve(this.child.exitCode);
    return new Promise((done) => this.child.once('exit', (code) => done(code)));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function readEnv(file: string): Record<string, string> {
  return Object.fromEntries(
    readFileSync(file, 'utf8')
      .trim()
      .split('\n')
      .map((line) => line.split(/=(.*)/s).slice(0, 2) as [string, string]),
  );
}

test('npm start (coffer dev) runs each manager as its own process: kill -9 the leader and the others carry on; Enter restarts it; Ctrl-C or the death of dev stops them all', {
  timeout: 300_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-dev-'));
  const dir = join(root, 'dev');
  const pids = new Set<number>();
  const runs: DevRun[] = [];
  try {
    const first = new DevRun(['--dir', dir]);
    runs.push(first);
    const managers = await first.managers();
    assert.equal(managers.length, 3);
    for (const m of managers) pids.add(m.pid);
    assert.equal(new Set(managers.map((m) => m.pid)).size, 3, 'three processes, not one');
    assert.ok(!managers.some((m) => m.pid === first.child.pid), 'no manager runs in the dev process');
    // Metrics are on by default, on loopback.
    assert.ok(managers.every((m) => m.metrics?.startsWith('http://127.0.0.1:')));
    assert.match(await (await fetch(managers[0]!.metrics!)).text(), /^coffer_raft_term\{/m);
    const env = readEnv(join(dir, 'client.env'));
    const ok = async (args: string[], input = '') => {
      const r = await coffer(args, input, env);
      assert.equal(r.code, 0, `coffer ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    await ok(['secret', 'put', 'app/one'], 'first value');

    // kill -9 the leader's process: the two left elect a leader and take writes.
    const status = JSON.parse(await ok(['cluster', 'status', '--output', 'json'])) as {
      leaderId: number;
      members: Array<{ nodeId: number; address: string }>;
    };
    const leaderAddress = status.members.find((m) => m.nodeId === status.leaderId)!.address;
    const leader = managers.find((m) => m.address === leaderAddress)!;
    process.kill(leader.pid, 'SIGKILL');
    await eventually(
      'dev to report the killed manager',
      10_000,
      async () =>
        new RegExp(
          `${leader.name} \\(${leader.address}\\) stopped \\(signal SIGKILL\\); the other managers carry on`,
        ).test(first.output) || undefined,
    );
    await eventually('a write with the leader killed', 30_000, async () => {
      const r = await coffer(['secret', 'put', 'app/two'], 'second value', env);
      return r.code === 0 ? true : undefined;
    });

    // Enter starts it again, as a new process that catches up.
    first.child.stdin!.write('\n');
    const again = await eventually('the restart', 10_000, async () => {
      const m = new RegExp(`${leader.name} \\(${leader.address}\\) started again, pid (\\d+)`).exec(first.output);
      return m === null ? undefined : Number(m[1]);
    });
    pids.add(again);
    assert.notEqual(again, leader.pid);
    await eventually('the restarted manager to catch up', 60_000, async () => {
      const r = await coffer(['secret', 'get', 'app/two', '--stale', '--addr', leader.address], '', env);
      return r.code === 0 && r.stdout === 'second value' ? true : undefined;
    });

    // Ctrl-C: every manager stops, and dev exits 0.
    first.child.kill('SIGINT');
    assert.equal(await first.exited(), 0);
    for (const pid of pids) assert.ok(!alive(pid), `manager process ${pid} outlived coffer dev`);

    // A second run reuses the cluster (without metrics, as asked); killing dev by -9 takes its managers with it.
    const second = new DevRun(['--dir', dir, '--no-metrics']);
    runs.push(second);
    const again2 = await second.managers();
    for (const m of again2) pids.add(m.pid);
    assert.deepEqual(
      again2.map((m) => m.address),
      managers.map((m) => m.address),
    );
    assert.equal(await ok(['secret', 'get', 'app/one']), 'first value');
    assert.equal(await ok(['secret', 'get', 'app/two']), 'second value');
    assert.ok(again2.every((m) => m.metrics === null));
    second.child.kill('SIGKILL');
    await second.exited();
    await eventually('the managers to stop after coffer dev was killed', 20_000, async () =>
      again2.every((m) => !alive(m.pid)) ? true : undefined,
    );
  } finally {
    for (const run of runs) if (run.child.exitCode === null) run.child.kill('SIGKILL');
    for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
    rmSync(root, { recursive: true, force: true });
  }
});
