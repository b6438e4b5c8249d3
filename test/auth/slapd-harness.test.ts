import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, EqualityFilter, InvalidCredentialsError, NoSuchObjectError } from 'ldapts';
import { type LdapUser, Slapd } from './support/slapd.ts';

// The harness is what the tests of the LDAP login stand on: if its directory accepted what a real
// one refuses (a wrong password, TLS under another CA), those tests would prove nothing. So this
// checks it the way the manager will use it: bind as the user over LDAPS or StartTLS, then read
// the groups that list the user.

const ALICE: LdapUser = { uid: 'alice', password: 'alice-pw', groups: ['devs', 'ops'], mail: 'alice@example.test' };
const BOB: LdapUser = { uid: 'bob', password: 'bob-pw', groups: ['devs'] };
const TIMEOUT = { timeout: 60_000 };

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function ldaps(slapd: Slapd, user: LdapUser, password = user.password): Promise<Client> {
  const client = new Client({ url: slapd.ldapsUrl, tlsOptions: { ca: slapd.caPem }, timeout: 10_000 });
  try {
    await client.bind(slapd.userDn(user.uid), password);
  } catch (error) {
    await client.unbind().catch(() => {});
    throw error;
  }
  return client;
}

describe('Slapd', TIMEOUT, () => {
  let dir: string;
  let slapd: Slapd;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'coffer-slapd-'));
    slapd = await Slapd.start(dir, { users: [ALICE, BOB] });
  });
  after(async () => {
    await slapd?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it('runs slapd on loopback with the DNs it reports', TIMEOUT, () => {
    assert.match(slapd.ldapUrl, /^ldap:\/\/127\.0\.0\.1:\d+$/);
    assert.match(slapd.ldapsUrl, /^ldaps:\/\/127\.0\.0\.1:\d+$/);
    assert.notEqual(slapd.ldapUrl.split(':')[2], slapd.ldapsUrl.split(':')[2]);
    assert.equal(slapd.baseDn, 'dc=example,dc=test');
    assert.equal(slapd.usersDn, 'ou=people,dc=example,dc=test');
    assert.equal(slapd.groupsDn, 'ou=groups,dc=example,dc=test');
    assert.equal(slapd.userDn('alice'), 'uid=alice,ou=people,dc=example,dc=test');
    assert.ok(isRunning(slapd.pid));
  });

  it('binds alice over LDAPS under its CA, and shows her own entry with memberOf', TIMEOUT, async () => {
    const client = await ldaps(slapd, ALICE);
    try {
      const { searchEntries } = await client.search(slapd.userDn('alice'), {
        scope: 'base',
        attributes: ['uid', 'mail', 'memberOf'],
      });
      assert.equal(searchEntries.length, 1);
      assert.equal(searchEntries[0]!['mail'], 'alice@example.test');
      assert.deepEqual([searchEntries[0]!['memberOf']].flat().sort(), [slapd.groupDn('devs'), slapd.groupDn('ops')]);
      // Users do not read one another.
      await assert.rejects(client.search(slapd.userDn('bob'), { scope: 'base' }), NoSuchObjectError);
    } finally {
      await client.unbind();
    }
    // Not trusted without the CA: the certificate really is the harness's own.
    const untrusting = new Client({ url: slapd.ldapsUrl, connectTimeout: 5_000 });
    await assert.rejects(
      untrusting.bind(slapd.userDn('alice'), ALICE.password),
      /self[- ]signed|unable to (get|verify)/i,
    );
  });

  it('binds bob over ldap:// after StartTLS', TIMEOUT, async () => {
    const client = new Client({ url: slapd.ldapUrl, timeout: 10_000 });
    try {
      await client.startTLS({ ca: slapd.caPem });
      await client.bind(slapd.userDn('bob'), BOB.password);
    } finally {
      await client.unbind();
    }
  });

  it('refuses a wrong password, an unknown user and an empty password', TIMEOUT, async () => {
    await assert.rejects(ldaps(slapd, ALICE, 'not-her-password'), InvalidCredentialsError);
    await assert.rejects(ldaps(slapd, { uid: 'mallory', password: 'x', groups: [] }), InvalidCredentialsError);
    // An empty password would be an unauthenticated bind (RFC 4513 5.1.2): slapd refuses it outright.
    await assert.rejects(ldaps(slapd, ALICE, ''), /unauthenticated bind/);
  });

  it("finds alice's groups by member, bound as alice; anonymous reads nothing", TIMEOUT, async () => {
    const client = await ldaps(slapd, ALICE);
    try {
      const { searchEntries } = await client.search(slapd.groupsDn, {
        scope: 'one',
        filter: new EqualityFilter({ attribute: 'member', value: slapd.userDn('alice') }),
        attributes: ['cn'],
      });
      assert.deepEqual(searchEntries.map((entry) => entry['cn']).sort(), ['devs', 'ops']);
    } finally {
      await client.unbind();
    }
    const anonymous = new Client({ url: slapd.ldapsUrl, tlsOptions: { ca: slapd.caPem }, timeout: 10_000 });
    try {
      await assert.rejects(anonymous.search(slapd.groupsDn, { filter: '(cn=*)' }), NoSuchObjectError);
    } finally {
      await anonymous.unbind();
    }
  });

  it('setPassword: the new password binds, the old one no longer does', TIMEOUT, async () => {
    await slapd.setPassword('bob', 'bob-new-pw');
    await (await ldaps(slapd, BOB, 'bob-new-pw')).unbind();
    await assert.rejects(ldaps(slapd, BOB), InvalidCredentialsError);
  });

  it('setGroups, addUser and removeUser change the directory', TIMEOUT, async () => {
    const carol: LdapUser = { uid: 'carol', password: 'carol-pw', groups: ['admins'] };
    await slapd.addUser(carol);
    await slapd.setGroups('alice', ['ops', 'admins']);
    await slapd.removeUser('bob');
    await assert.rejects(ldaps(slapd, BOB, 'bob-new-pw'), InvalidCredentialsError);
    const client = await ldaps(slapd, carol);
    try {
      const { searchEntries } = await client.search(slapd.groupsDn, { scope: 'one', attributes: ['cn', 'member'] });
      const groups = Object.fromEntries(
        searchEntries.map((entry) => [entry['cn'], [entry['member']].flat().map(String).sort()]),
      );
      // devs lost both alice and bob: a groupOfNames needs a member, so it is gone.
      assert.deepEqual(groups, {
        ops: [slapd.userDn('alice')],
        admins: [slapd.userDn('alice'), slapd.userDn('carol')],
      });
    } finally {
      await client.unbind();
    }
  });

  it('stop() ends slapd by PID and can be called again', TIMEOUT, async () => {
    const pid = slapd.pid;
    await slapd.stop();
    assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' });
    await slapd.stop();
    const client = new Client({ url: slapd.ldapUrl, connectTimeout: 2_000 });
    await assert.rejects(client.bind(slapd.adminDn, slapd.adminPassword), /ECONNREFUSED/);
  });
});
