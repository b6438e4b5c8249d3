import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProcessCluster, type Manager } from '../chaos/process-cluster.ts';
import { coffer, eventually } from './processes.ts';

// Membership and leadership by an operator, on three manager processes: the CLI, the RPCs behind
// it, forwarding from followers, and the refusals that protect the quorum.
test('coffer cluster status, transfer-leader, demote, promote and remove on three manager processes', {
  timeout: 240_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-members-'));
  let cluster: ProcessCluster | null = null;
  try {
    cluster = await ProcessCluster.start(root, 3);
    const c = cluster;
    const env = {
      COFFER_ADDR: c.managers.map((m) => m.address).join(','),
      COFFER_CA: join(c.adminDir, 'ca.crt'),
      COFFER_CERT: join(c.adminDir, 'admin.crt'),
      COFFER_KEY: join(c.adminDir, 'admin.key'),
    };
    const cli = async (args: string[], at?: Manager) =>
      coffer([...args, ...(at === undefined ? [] : ['--addr', at.address])], undefined, env);
    const idOf = async (m: Manager) => (await c.status(m)).nodeId;
    const leaderNow = async () => eventually('a leader', 20_000, async () => (await c.leader()) ?? undefined);

    // Status, asked of a follower, shows every member from the leader's view.
    let leader = await leaderNow();
    const follower = c.managers.find((m) => m !== leader)!;
    await eventually('every member healthy', 20_000, async () => {
      const text = (await cli(['cluster', 'status'], follower)).stdout;
      return (text.match(/healthy/g) ?? []).length === 3 ? text : undefined;
    });
    const status = await cli(['cluster', 'status'], follower);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /as seen by the leader, manager \d+/);
    for (const m of c.managers) assert.ok(status.stdout.includes(m.address), status.stdout);
    assert.equal((status.stdout.match(/ leader +healthy/g) ?? []).length, 1, status.stdout);
    assert.match(status.stdout, /keyring term \d+, rotated \d{4}-\d\d-\d\dT.*autolock off; recovery key set/);
    assert.equal(
      (status.stdout.match(/ \d+ +\d+\/\d+ +in step +\d{4}-\d\d-\d\d/g) ?? []).length,
      3,
      `each member's own term, commit/applied, host clock and certificate expiry:\n${status.stdout}`,
    );

    // Leadership to a named voter, asked of a manager that is neither.
    const target = c.managers.find((m) => m !== leader && m !== follower) ?? follower;
    const targetId = await idOf(target);
    const moved = await cli(
      ['cluster', 'transfer-leader', String(targetId), '--output', 'json'],
      c.managers.find((m) => m !== target)!,
    );
    assert.equal(moved.code, 0, moved.stderr);
    assert.equal((JSON.parse(moved.stdout) as { leaderId: number }).leaderId, targetId);
    assert.equal((await c.status(target)).role, 'leader');
    // And to whoever is most caught up.
    const again = await cli(['cluster', 'transfer-leader'], target);
    assert.equal(again.code, 0, again.stderr);
    leader = await leaderNow();
    assert.notEqual(leader, target);

    // Demote a follower: it stays a learner (held) and the cluster keeps taking writes.
    const demoted = c.managers.find((m) => m !== leader)!;
    const demotedId = await idOf(demoted);
    const demote = await cli(['cluster', 'demote', String(demotedId)], leader);
    assert.equal(demote.code, 0, demote.stderr);
    assert.match(demote.stdout, new RegExp(`learners: ${demotedId}`));
    const writer = c.client(leader, 5000);
    await writer.put('members/a', Buffer.from('one'));
    await new Promise((resolve) => setTimeout(resolve, 2500)); // several housekeeping rounds
    assert.deepEqual((await c.status(leader)).learners, [demotedId], 'a held learner is not promoted on its own');
    assert.match((await cli(['cluster', 'status'], leader)).stdout, /learner \(held\)/);
    const promote = await cli(['cluster', 'promote', String(demotedId)], demoted);
    assert.equal(promote.code, 0, promote.stderr);
    await eventually('three voters again', 10_000, async () =>
      (await c.status(leader)).voters.length === 3 ? true : undefined,
    );

    // Refusals: a voter promoted again, an unknown manager, a malformed id.
    const twice = await cli(['cluster', 'promote', String(demotedId)]);
    assert.notEqual(twice.code, 0);
    assert.match(twice.stderr, /FAILED_PRECONDITION: .*already a voter/);
    const unknown = await cli(['cluster', 'remove', '424242']);
    assert.match(unknown.stderr, /NOT_FOUND: .*424242 is not a member/);
    const malformed = await cli(['cluster', 'demote', 'm2']);
    assert.notEqual(malformed.code, 0);
    assert.match(malformed.stderr, /node id/);

    // With one follower down, demoting the other would leave no healthy quorum: refused, nothing changes.
    const [down, other] = c.managers.filter((m) => m !== leader) as [Manager, Manager];
    const downId = await idOf(down);
    const otherId = await idOf(other);
    await c.kill(down);
    await new Promise((resolve) => setTimeout(resolve, 3000)); // longer than two election timeouts
    const refused = await cli(['cluster', 'demote', String(otherId)], leader);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /FAILED_PRECONDITION: .*need 2 healthy to keep a quorum/);
    assert.equal((await c.status(leader)).voters.length, 3);
    await writer.put('members/a', Buffer.from('two'));
    assert.match(
      (await cli(['cluster', 'status'], leader)).stdout,
      new RegExp(`${downId} .*unreachable .*no answer \\(down or locked\\)`),
    );
    c.restart(down);
    await eventually(
      `manager ${downId} healthy again`,
      30_000,
      async () => ((await cli(['cluster', 'status'], leader)).stdout.match(/healthy/g) ?? []).length === 3 || undefined,
    );

    // Removing the leader hands leadership over first; the others carry on with the data.
    const leaderId = await idOf(leader);
    const removed = await cli(['cluster', 'remove', String(leaderId)], other);
    assert.equal(removed.code, 0, removed.stderr);
    assert.doesNotMatch(removed.stdout, new RegExp(`\\b${leaderId}\\b`));
    const rest = c.managers.filter((m) => m !== leader);
    const after = await eventually('a leader among the two left', 20_000, async () => {
      const s = await Promise.all(rest.map((m) => c.status(m).catch(() => null)));
      return s.find((x) => x?.role === 'leader' && x.voters.length === 2) ?? undefined;
    });
    assert.ok(!after.voters.includes(leaderId));
    const reader = c.client(rest[0]!, 5000);
    await reader.put('members/b', Buffer.from('three'));
    assert.equal((await reader.get('members/a')).value.toString(), 'two');
    // The removed manager may never apply its own removal (the leader stops replicating to it);
    // the members refusing its streams tell it. It then exits (status 77), its log saying why,
    // rather than linger looking alive (test/processes/three-managers.test.ts runs one that waits).
    await eventually('the removed manager to exit', 20_000, async () => c.procs.exitCode(leader.name) ?? undefined);
    assert.equal(c.procs.exitCode(leader.name), 77);
    assert.match(c.procs.log(leader.name), /"event":"removed-from-cluster"/, 'its log says why');
    assert.match(
      c.procs.log(leader.name),
      /"event":"exiting-removed".*removed from the cluster: exiting \(status 77\)\. Delete its data directory, or join the cluster again/,
    );
    writer.close();
    reader.close();
  } finally {
    await cluster?.stop();
    rmSync(root, { recursive: true, force: true });
  }
});
