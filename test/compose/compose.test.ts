import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { checkServerIdentity, connect } from 'node:tls';
import { identityOf } from '../../src/crypto/pki.ts';
import { AdminClient, coffer, eventually } from '../processes/processes.ts';
import { ComposeRun, HOST_ADDRESS, REPO, loadCompose, type ComposeModel } from './compose-harness.ts';

const COMPOSE = { text: readFileSync(join(REPO, 'docker-compose.yml'), 'utf8'), dir: REPO };
const AUTOLOCK = readFileSync(join(REPO, 'docker-compose.autolock.yml'), 'utf8');
const MANAGERS = ['m1', 'm2', 'm3'];
const UP_TIMEOUT_MS = 120_000;
const SECRETS_SCRIPT = join(REPO, 'scripts/compose-secrets.sh');
/** The image's user (node in node:20-slim), whom the key files must belong to. */
const CONTAINER_UID = 1000;
const KEY_FILES = ['m1.key', 'm2.key', 'm3.key', 'm4.key', 'm5.key', 'unlock.key'];
const ME = process.getuid?.() ?? -1;

/**
 * Secrets for a run, made by the script the README tells operators to run, in the temp dir, and
 * checked as a container sees them: as root (or uid 1000) the script leaves them to uid 1000,
 * mode 600, and exits 0; as anyone else it cannot, and stops (exit 1) with the command that does.
 */
function makeSecrets(root: string): void {
  const made = spawnSync('sh', [SECRETS_SCRIPT, join(root, 'secrets'), '5'], { encoding: 'utf8' });
  for (const name of KEY_FILES) {
    const stat = statSync(join(root, 'secrets', name));
    assert.equal(stat.mode & 0o777, 0o600, `${name}: mode 600`);
    if (ME === 0 || ME === CONTAINER_UID)
      assert.equal(stat.uid, CONTAINER_UID, `${name} belongs to the managers' user`);
  }
  if (ME === 0 || ME === CONTAINER_UID) {
    assert.equal(made.status, 0, made.stderr);
    assert.match(made.stdout, /key files ready/);
  } else {
    // The services run as this user here (the harness cannot switch), who owns the files.
    assert.equal(made.status, 1, made.stdout);
    assert.match(made.stderr, new RegExp(`sudo chown ${CONTAINER_UID}:${CONTAINER_UID} `));
  }
}

/** Everything that would be key material: the secret files' bytes in any encoding, tokens, PEM keys. */
function assertNoSecretMaterial(model: ComposeModel, text: string, where: string): void {
  assert.doesNotMatch(
    text,
    /CFRTKN-|CFRKEY-|CFRREC-|PRIVATE KEY/,
    `${where} holds a join token, an unlock key, a recovery key or a private key`,
  );
  for (const [name, file] of model.secretFiles) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(file);
    } catch {
      continue;
    }
    for (const encoded of [
      bytes.toString('hex'),
      bytes.toString('base64'),
      bytes.toString('base64url'),
      bytes.toString('latin1'),
    ]) {
      assert.ok(!text.includes(encoded), `${where} holds the contents of secret ${name}`);
    }
  }
}

test('docker-compose.yml and cluster/Dockerfile: managers with healthchecks, restart policies, published ports, key files as secrets, nothing secret in the environment or the image', () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-compose-static-'));
  try {
    makeSecrets(root);
    const model = loadCompose(COMPOSE, root, { profiles: ['five'] });
    assert.deepEqual([...model.services.keys()], ['init', 'm1', 'm2', 'm3', 'm4', 'm5']);
    assert.deepEqual(model.entrypoint, ['coffer']);
    assert.deepEqual(model.user, { uid: CONTAINER_UID, gid: CONTAINER_UID }, 'the image runs as node, uid 1000');
    // The tools service: not started by up; the admin identity, and the shared volume read-write.
    const tools = model.allServices.get('tools');
    assert.ok(tools !== undefined, 'a tools service');
    assert.deepEqual(tools.profiles, ['tools']);
    assert.equal(tools.oneShot, true);
    assert.deepEqual(tools.ports, []);
    assert.deepEqual(tools.secrets, [], 'tools gets no key file');
    assert.ok(tools.mounts.has('/shared') && !tools.readOnly.has('/shared'), 'tools mounts /shared read-write');
    assert.equal(tools.raw.environment['COFFER_CERT'], '/shared/admin/admin.crt');
    assert.equal(tools.raw.environment['COFFER_KEY'], '/shared/admin/admin.key');
    assertNoSecretMaterial(model, JSON.stringify(tools.raw), 'the tools service');
    const published = new Set<number>();
    for (const [name, service] of model.services) {
      const env = JSON.stringify(service.raw.environment);
      assertNoSecretMaterial(model, env, `the environment of ${name}`);
      assertNoSecretMaterial(model, JSON.stringify(service.raw.command), `the command of ${name}`);
      for (const variable of Object.keys(service.raw.environment)) {
        if (/KEY|TOKEN|SECRET|PASSWORD/i.test(variable))
          assert.match(service.raw.environment[variable]!, /^\//, `${name}: ${variable} must be a path, not the value`);
      }
      assert.ok(!service.raw.command.includes('--token'), `${name} must read the join token from a file, not argv`);
      if (name === 'init') {
        assert.equal(service.oneShot, true, 'init runs once');
        continue;
      }
      assert.equal(service.restart, 'unless-stopped', name);
      assert.deepEqual(
        service.raw.healthcheck?.slice(0, 3),
        ['CMD', 'coffer', 'health'],
        `${name} is checked by coffer health`,
      );
      assert.equal(service.ports.length, 1, `${name} publishes its client port`);
      const port = service.ports[0]!;
      assert.equal(port.target, 7400);
      assert.ok(!published.has(port.published), `port ${port.published} is published twice`);
      published.add(port.published);
      assert.ok(
        service.secrets.length === 1 && [...service.mounts.keys()].some((target) => target.startsWith('/run/secrets/')),
        `${name} gets its key file as a secret`,
      );
      assert.ok(service.raw.command.includes('--key-file'), `${name} is told where its key file is`);
      assert.ok(service.readOnly.has('/shared'), `${name} mounts /shared read-only: only init and tools write it`);
    }
    // Every manager's certificate names localhost and 127.0.0.1, so clients that check host names
    // reach the published ports from the host; init makes m1's, the others' joins make theirs.
    // The autolock file replaces the commands whole, so it is checked too.
    const autolock = loadCompose(COMPOSE, root, { profiles: ['five'], overrides: [AUTOLOCK] });
    for (const [file, services] of [
      ['docker-compose.yml', model.services],
      ['docker-compose.autolock.yml', autolock.services],
    ] as const) {
      for (const [name, service] of services) {
        if (name === 'm1') continue;
        const sans = service.raw.command.flatMap((arg, k, all) => (all[k - 1] === '--san' ? [arg] : []));
        assert.deepEqual(
          sans,
          ['localhost', '127.0.0.1'],
          `${file}: ${name}'s certificate names localhost and 127.0.0.1`,
        );
      }
    }
    const dockerfile = readFileSync(join(REPO, 'cluster/Dockerfile'), 'utf8');
    assert.match(dockerfile, /^FROM node:20-slim$/m);
    assert.match(dockerfile, /^USER node$/m, 'the manager runs as a non-root user');
    assert.match(dockerfile, /npm ci --omit=dev/);
    assert.doesNotMatch(
      dockerfile,
      /^(ENV|ARG)\s+\S*(KEY|TOKEN|SECRET|PASSWORD)/im,
      "no secret in the image's environment",
    );
    assert.doesNotMatch(dockerfile, /COPY\s+(\.|secrets)\s/, 'the image copies only what it needs');
    assert.match(readFileSync(join(REPO, '.dockerignore'), 'utf8'), /^secrets$/m);
    assert.match(readFileSync(join(REPO, '.gitignore'), 'utf8'), /^\/secrets\/$/m);
    // The script never overwrites a key file.
    const before = readFileSync(join(root, 'secrets', 'm1.key'));
    assert.equal(before.byteLength, 32);
    assert.deepEqual(readdirSync(join(root, 'secrets')).sort(), KEY_FILES);
    makeSecrets(root);
    assert.deepEqual(readFileSync(join(root, 'secrets', 'm1.key')), before);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

/**
 * A TLS handshake with `address` as a standard client makes it: trusting `caPem` and checking the
 * certificate against `name` (a DNS name or an IP address) with Node's default check.
 */
function standardHandshake(address: string, caPem: string, name: string): Promise<'ok' | string> {
  const [host, port] = [
    address.slice(0, address.lastIndexOf(':')),
    Number(address.slice(address.lastIndexOf(':') + 1)),
  ];
  return new Promise((resolve) => {
    const socket = connect(
      {
        host,
        port,
        ca: caPem,
        ALPNProtocols: ['h2'],
        ...(isIP(name) === 0 ? { servername: name } : {}),
        checkServerIdentity: (_host, cert) => checkServerIdentity(name, cert),
      },
      () => {
        socket.destroy();
        resolve('ok');
      },
    );
    socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

/**
 * `docker compose up --wait`, the checks, `stop`, and `up` again, as local processes; `check` adds
 * what a variant must also hold (with the admin client and the published addresses), after each up.
 */
async function upTwice(
  overrides: readonly string[],
  check: (client: AdminClient, published: string[], round: number, caPem: string) => Promise<void>,
): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), 'coffer-compose-'));
  let run: ComposeRun | null = null;
  let admin: AdminClient | null = null;
  try {
    makeSecrets(root);
    const model = loadCompose(COMPOSE, root, { overrides });
    assert.deepEqual([...model.services.keys()], ['init', ...MANAGERS], 'the five-manager profile is off by default');
    run = new ComposeRun(model, join(root, 'logs-1'));
    const started = Date.now();
    await run.up(UP_TIMEOUT_MS, { wait: true });
    const first = run;
    for (const name of MANAGERS) assert.equal((await first.healthcheck(name)).code, 0, `the healthcheck of ${name}`);
    const upMs = Date.now() - started;

    // The operator's view: the admin identity from the shared volume, managers at the published ports.
    const adminDir = join(model.volumeDirs.get('shared')!, 'admin');
    admin = new AdminClient(adminDir, identityOf(readFileSync(join(adminDir, 'admin.crt'), 'utf8')).clusterId);
    const client = admin;
    const published = MANAGERS.map((name) => `${HOST_ADDRESS}:${model.services.get(name)!.ports[0]!.published}`);
    const voters = await eventually('three voters and no learner', 60_000, async () => {
      const s = await client.status(published[0]!);
      return s.voters.length === 3 && s.learners.length === 0 ? [...s.voters].sort() : undefined;
    });
    for (const address of published) assert.deepEqual([...(await client.status(address)).voters].sort(), voters);
    await client.call(published[1]!, 'Secrets', 'put', {
      name: 'app/db/password',
      value: Buffer.from('compose-value-1'),
    });
    for (const address of [published[2]!, published[0]!]) {
      const got = await client.call<{ value: Buffer }>(address, 'Secrets', 'get', { name: 'app/db/password' });
      assert.equal(got.value.toString(), 'compose-value-1', `read at ${address}`);
    }
    for (const name of run.model.services.keys()) assertNoSecretMaterial(model, run.log(name), `the log of ${name}`);
    if (run.user !== null)
      for (const volume of ['m1-data', 'm2-data', 'm3-data'])
        assert.equal(
          statSync(join(model.volumeDirs.get(volume)!, 'node.json')).uid,
          CONTAINER_UID,
          `${volume} was written by the managers, as uid ${CONTAINER_UID}, with the key files the script made`,
        );
    assert.match(
      readFileSync(join(model.volumeDirs.get('shared')!, 'recovery-key'), 'utf8'),
      /^CFRREC-1-/,
      'init wrote the recovery key to the shared volume, not its log',
    );
    const caPem = readFileSync(join(adminDir, 'ca.crt'), 'utf8');
    await check(client, published, 1, caPem);

    // docker compose stop, then up again: init finds the cluster and does nothing; m2 and m3 serve
    // what they hold instead of joining again; no member is added.
    await run.down();
    run = new ComposeRun(model, join(root, 'logs-2'));
    await run.up(UP_TIMEOUT_MS, { wait: true });
    const second = run;
    assert.match(second.log('init'), /already holds a manager: nothing to do/);
    for (const name of MANAGERS) {
      assert.equal((await second.healthcheck(name)).code, 0, `the healthcheck of ${name} after the restart`);
      assert.doesNotMatch(second.log(name), /joined cluster/, `${name} does not join again`);
    }
    admin.close();
    admin = new AdminClient(adminDir, identityOf(readFileSync(join(adminDir, 'admin.crt'), 'utf8')).clusterId);
    const again = admin;
    await eventually('the same three voters', 60_000, async () => {
      const s = await again.status(published[2]!);
      return JSON.stringify([...s.voters].sort()) === JSON.stringify(voters) && s.learners.length === 0
        ? true
        : undefined;
    });
    const got = await eventually('the value written before the restart', 30_000, async () =>
      (
        await again.call<{ value: Buffer }>(published[2]!, 'Secrets', 'get', { name: 'app/db/password' })
      ).value.toString(),
    );
    assert.equal(got, 'compose-value-1');
    await check(again, published, 2, caPem);
    process.stderr.write(
      `# compose${overrides.length === 0 ? '' : ' (with an override)'}: cluster up and healthy in ${upMs} ms\n`,
    );
  } catch (error) {
    // The services' logs say why; the temporary directory goes with them.
    const logs =
      run === null
        ? ''
        : [...run.model.services.keys()].map((name) => `--- ${name}\n${run!.log(name).slice(-2500)}`).join('\n');
    throw new Error(`${(error as Error).message}\n${logs}`, { cause: error });
  } finally {
    admin?.close();
    await run?.down();
    rmSync(root, { recursive: true, force: true });
  }
}

test('docker compose up, run as local processes in the order of depends_on: three voters, a write through one manager read on the others, every healthcheck passes; then the same commands again (a restart) change nothing', {
  timeout: 360_000,
}, async () => {
  await upTwice([], async (client, published, _round, caPem) => {
    for (const address of published) {
      assert.equal((await client.call<{ protection: string }>(address, 'Keys', 'status', {})).protection, 'key-file');
      // A client that checks host names (any gRPC library but Coffer's own) dials the published
      // port as localhost or 127.0.0.1: both names are in the certificate; another name is not.
      assert.equal(await standardHandshake(address, caPem, 'localhost'), 'ok', `${address} as localhost`);
      assert.equal(await standardHandshake(address, caPem, '127.0.0.1'), 'ok', `${address} as 127.0.0.1`);
      assert.equal(await standardHandshake(address, caPem, 'm9.example'), 'ERR_TLS_CERT_ALTNAME_INVALID');
    }
  });
});

test('docker-compose.autolock.yml over docker-compose.yml: every manager autolocked with the unlock key from a secret, and a restart unlocks them from it', {
  timeout: 360_000,
}, async () => {
  await upTwice([AUTOLOCK], async (client, published, round) => {
    await eventually(`every manager autolocked (round ${round})`, 30_000, async () => {
      const all = await Promise.all(
        published.map((address) => client.call<{ protection: string }>(address, 'Keys', 'status', {})),
      );
      return all.every((k) => k.protection === 'unlock-key') ? true : undefined;
    });
  });
});

test('a broken compose file fails the run: a wrong flag, a manager that does not wait for init, a dependency cycle; and (as root) key files the managers cannot read', {
  timeout: 240_000,
}, async () => {
  const cases: Array<{
    what: string;
    edit: (text: string) => string;
    error: RegExp;
    /** Breaks the secrets instead of the file. */
    spoil?: (secrets: string) => void;
  }> = [
    {
      what: 'a misspelt flag in m2',
      edit: (t) =>
        t.replace(
          '"--join", "m1:7400", "--token-file", "/shared/join-token", "--listen", "0.0.0.0:7400", "--advertise", "m2:7400"',
          '"--join", "m1:7400", "--token-fil", "/shared/join-token", "--listen", "0.0.0.0:7400", "--advertise", "m2:7400"',
        ),
      error: /service m2 exited/,
    },
    {
      what: 'm1 not waiting for init',
      edit: (t) =>
        t.replace(/( {2}m1:[\s\S]*?) {4}depends_on:\n {6}init:\n {8}condition: service_completed_successfully\n/, '$1'),
      error: /service m1 exited|never became healthy/,
    },
    {
      what: 'a dependency cycle',
      edit: (t) => t.replace(/( {2}m1:[\s\S]*?depends_on:\n)/, '$1      m3:\n        condition: service_healthy\n'),
      error: /cycle/,
    },
  ];
  if (ME === 0)
    cases.push({
      // What the script left before it chowned: what issue 18 (finding 6a) found.
      what: 'key files left to root, mode 600',
      edit: (t) => t,
      spoil: (secrets) => {
        for (const name of KEY_FILES) chownSync(join(secrets, name), 0, 0);
      },
      error: /service init exited with code 1[\s\S]*cannot read the key file \S*m1_key: EACCES/,
    });
  for (const { what, edit, error, spoil } of cases) {
    const text = edit(COMPOSE.text);
    if (spoil === undefined) assert.notEqual(text, COMPOSE.text, `the edit for "${what}" applies`);
    const root = mkdtempSync(join(tmpdir(), 'coffer-compose-broken-'));
    let run: ComposeRun | null = null;
    try {
      makeSecrets(root);
      spoil?.(join(root, 'secrets'));
      await assert.rejects(
        (async () => {
          run = new ComposeRun(loadCompose({ text, dir: REPO }, root), join(root, 'logs'));
          await run.up(60_000, { wait: true });
        })(),
        error,
        what,
      );
    } finally {
      await (run as ComposeRun | null)?.down();
      rmSync(root, { recursive: true, force: true });
    }
  }
});

test('scripts/compose-secrets.sh run as a user who is neither root nor uid 1000 stops before up (exit 1) and prints the command that gives the files to uid 1000; after that command the script says they are ready', (t) => {
  if (ME !== 0) {
    t.skip('needs root, to run the script as another user and as root');
    return;
  }
  const OTHER = 1001;
  const root = mkdtempSync(join(tmpdir(), 'coffer-compose-script-'));
  try {
    chmodSync(root, 0o755);
    const work = join(root, 'work');
    mkdirSync(work);
    chownSync(work, OTHER, OTHER);
    const asOther = () =>
      spawnSync('sh', [SECRETS_SCRIPT, 'my secrets', '2'], { cwd: work, uid: OTHER, gid: OTHER, encoding: 'utf8' });
    const first = asOther();
    assert.equal(first.status, 1, first.stdout);
    assert.match(first.stderr, /STOP: the managers cannot read these key files/);
    const files = ['m1.key', 'm2.key', 'unlock.key'];
    for (const name of files) {
      const stat = statSync(join(work, 'my secrets', name));
      assert.deepEqual([stat.uid, stat.mode & 0o777], [OTHER, 0o600], name);
    }
    const fix = /^ {2}sudo (chown .*)$/m.exec(first.stderr)?.[1];
    assert.equal(fix, `chown 1000:1000 ${files.map((f) => `'my secrets/${f}'`).join(' ')}`);
    const before = readFileSync(join(work, 'my secrets', 'm1.key'));
    // The printed command, as root (what sudo does), then the script again as the same user.
    assert.equal(spawnSync('sh', ['-c', fix!], { cwd: work }).status, 0);
    const second = asOther();
    assert.equal(second.status, 0, second.stderr);
    assert.match(second.stdout, /key files ready/);
    assert.deepEqual(readFileSync(join(work, 'my secrets', 'm1.key')), before, 'the key file is kept');
    // A kept file others may read, run as root: given to uid 1000 and tightened to 600.
    chownSync(join(work, 'my secrets', 'm2.key'), OTHER, OTHER);
    chmodSync(join(work, 'my secrets', 'm2.key'), 0o644);
    const asRoot = spawnSync('sh', [SECRETS_SCRIPT, 'my secrets', '2'], { cwd: work, encoding: 'utf8' });
    assert.equal(asRoot.status, 0, asRoot.stderr);
    const m2 = statSync(join(work, 'my secrets', 'm2.key'));
    assert.deepEqual([m2.uid, m2.gid, m2.mode & 0o777], [CONTAINER_UID, CONTAINER_UID, 0o600]);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('the tools service (docker compose run --rm tools ...): admin commands with the admin identity; the recovery key removed from the shared volume; the join token rotated where managers read it, the old one refused, and a manager that lost its volume joins again with the new one', {
  timeout: 360_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-compose-tools-'));
  let run: ComposeRun | null = null;
  let admin: AdminClient | null = null;
  try {
    makeSecrets(root);
    const model = loadCompose(COMPOSE, root);
    assert.ok(!model.services.has('tools'), 'up does not start tools');
    run = new ComposeRun(model, join(root, 'logs'));
    await run.up(UP_TIMEOUT_MS, { wait: true });
    const shared = model.volumeDirs.get('shared')!;

    // docker compose run --rm tools: its own command, cluster status.
    const status = await run.runOnce('tools');
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /leader/);

    // The recovery key: copied out (docker compose cp m1:/shared/recovery-key .), then removed
    // with: docker compose run --rm --entrypoint rm tools /shared/recovery-key
    assert.match(readFileSync(join(shared, 'recovery-key'), 'utf8'), /^CFRREC-1-/);
    const removed = await run.runOnce('tools', ['/shared/recovery-key'], { entrypoint: ['rm'] });
    assert.equal(removed.code, 0, removed.stderr);
    assert.equal(existsSync(join(shared, 'recovery-key')), false, 'the recovery key is gone from the shared volume');

    // docker compose run --rm tools cluster rotate-join-token --token-file /shared/join-token
    const oldToken = readFileSync(join(shared, 'join-token'), 'utf8');
    const rotated = await run.runOnce('tools', ['cluster', 'rotate-join-token', '--token-file', '/shared/join-token']);
    assert.equal(rotated.code, 0, rotated.stderr);
    assert.match(rotated.stdout, /manager join token written to \S*join-token/);
    assert.doesNotMatch(rotated.stdout + rotated.stderr, /CFRTKN-/, 'the token is in the file only');
    const newToken = readFileSync(join(shared, 'join-token'), 'utf8');
    assert.match(newToken, /^CFRTKN-1-/);
    assert.notEqual(newToken, oldToken);
    const tokenStat = statSync(join(shared, 'join-token'));
    assert.equal(tokenStat.mode & 0o777, 0o600);
    if (run.user !== null) assert.equal(tokenStat.uid, run.user.uid, 'written by the tools container, as node');

    // The old token is refused: a new manager that tries it.
    writeFileSync(join(root, 'old-token'), oldToken, { mode: 0o600 });
    const m1 = `${model.services.get('m1')!.address}:7400`;
    const stranger = await coffer([
      'join',
      '--data',
      join(root, 'stranger'),
      '--listen',
      '127.0.0.40:7400',
      '--join',
      m1,
      '--token-file',
      join(root, 'old-token'),
    ]);
    assert.equal(stranger.code, 1, stranger.stderr);
    assert.match(stranger.stderr, /the join token is not valid: it was rotated/);

    // m3 loses its volume. Its old id is removed (its data is gone for good), then it starts
    // again on an empty volume: it joins through m1 with the token in /shared/join-token.
    const published = MANAGERS.map((name) => `${HOST_ADDRESS}:${model.services.get(name)!.ports[0]!.published}`);
    const adminDir = join(shared, 'admin');
    admin = new AdminClient(adminDir, identityOf(readFileSync(join(adminDir, 'admin.crt'), 'utf8')).clusterId);
    const client = admin;
    const lostId = (await client.status(published[2]!)).nodeId;
    await run.stop('m3');
    const removal = await run.runOnce('tools', ['cluster', 'remove', String(lostId)]);
    assert.equal(removal.code, 0, removal.stderr);
    run.removeVolume('m3-data');
    run.start('m3');
    await run.waitHealthy('m3', UP_TIMEOUT_MS);
    assert.equal(run.log('m3').match(/joined cluster/g)?.length, 2, 'm3 joined twice: at the first up, and now');
    const voters = await eventually('three voters again, m3 with a new id', 60_000, async () => {
      const s = await client.status(published[0]!);
      return s.voters.length === 3 && s.learners.length === 0 ? [...s.voters] : undefined;
    });
    assert.ok(!voters.includes(lostId), `the lost id ${lostId} is not a voter`);
    assert.ok(voters.includes((await client.status(published[2]!)).nodeId));
    const after = await run.runOnce('tools');
    assert.equal(after.code, 0, after.stderr);
    for (const name of MANAGERS) assert.equal((await run.healthcheck(name)).code, 0, `the healthcheck of ${name}`);
  } catch (error) {
    const logs =
      run === null
        ? ''
        : [...run.model.services.keys()].map((name) => `--- ${name}\n${run!.log(name).slice(-2500)}`).join('\n');
    throw new Error(`${(error as Error).message}\n${logs}`, { cause: error });
  } finally {
    admin?.close();
    await run?.down();
    rmSync(root, { recursive: true, force: true });
  }
});
