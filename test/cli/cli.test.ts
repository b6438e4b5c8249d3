import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Processes, coffer as runCoffer, eventually } from '../processes/processes.ts';

function readEnv(file: string): Record<string, string> {
  return Object.fromEntries(
    readFileSync(file, 'utf8')
      .trim()
      .split('\n')
      .map((line) => line.split(/=(.*)/s).slice(0, 2) as [string, string]),
  );
}

function coffer(env: Record<string, string>, args: string[], input = ''): ReturnType<typeof runCoffer> {
  return runCoffer(args, input, env);
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? filesUnder(path) : [path];
  });
}

test("the coffer CLI against npm start's local cluster: every secret operation, policies, identities, revocation, audit, run, bad input; no value on disk or in a log", {
  timeout: 300_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-cli-'));
  const procs = new Processes(root);
  try {
    const dir = join(root, 'dev');
    procs.start('dev', ['dev', '--dir', dir]);
    await eventually('the dev cluster', 90_000, async () =>
      /managers running/.test(procs.log('dev')) ? true : undefined,
    );
    const admin = readEnv(join(dir, 'client.env'));
    assert.equal(admin['COFFER_ADDR']!.split(',').length, 3);
    const ok = async (args: string[], input = '', env = admin) => {
      const r = await coffer(env, args, input);
      assert.equal(r.code, 0, `coffer ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    const fails = async (args: string[], pattern: RegExp, input = '', env = admin) => {
      const r = await coffer(env, args, input);
      assert.notEqual(r.code, 0, `coffer ${args.join(' ')} should fail`);
      assert.match(r.stderr, pattern);
    };
    const values = [randomBytes(18).toString('base64url'), randomBytes(18).toString('base64url')];

    // Put from stdin and from a file (never argv); get prints the value alone.
    assert.match(await ok(['secret', 'put', 'app/db/password'], values[0]), /version 1/);
    writeFileSync(join(root, 'value'), values[1]!);
    await ok(['secret', 'put', 'app/db/password', '--from-file', join(root, 'value')]);
    assert.equal(await ok(['secret', 'get', 'app/db/password']), values[1]);
    assert.equal(await ok(['secret', 'get', 'app/db/password', '--version', '1']), values[0]);
    assert.equal(
      await ok(['secret', 'get', 'app/db/password', '--stale', '--addr', admin['COFFER_ADDR']!.split(',')[2]!]),
      values[1],
      'stale read on one chosen manager',
    );
    const json = JSON.parse(await ok(['secret', 'get', 'app/db/password', '--output', 'json'])) as {
      version: number;
      appliedIndex: number;
    };
    assert.equal(json.version, 2);
    // Labels and rollback, versions, listing, soft delete, destroy, generate.
    await ok(['secret', 'label', 'app/db/password', 'current', '1']);
    assert.equal(await ok(['secret', 'get', 'app/db/password']), values[0]);
    assert.match(
      await ok(['secret', 'versions', 'app/db/password']),
      /^v1\t.*live\t\[(previous, current|current, previous)\]$/m,
    );
    await ok(['secret', 'generate', 'app/api-key', '--length', '24', '--charset', 'hex']);
    assert.match(await ok(['secret', 'get', 'app/api-key']), /^[0-9a-f]{24}$/);
    assert.match(await ok(['secret', 'ls', 'app/']), /app\/api-key[\s\S]*app\/db\/password/);
    await ok(['secret', 'rm', 'app/api-key']);
    await fails(['secret', 'get', 'app/api-key'], /NOT_FOUND: .*is deleted/);
    await ok(['secret', 'undelete', 'app/api-key']);
    await ok(['secret', 'destroy', 'app/db/password', '--versions', '2']);
    await fails(
      ['secret', 'get', 'app/db/password', '--version', '2'],
      /FAILED_PRECONDITION: .*version 2 was destroyed/,
    );
    // Bad input, with the right codes.
    await fails(['secret', 'put', 'bad name'], /INVALID_ARGUMENT: .*segments of letters/, 'x');
    await fails(['secret', 'put', 'big'], /RESOURCE_EXHAUSTED: .*at most 524288/, 'x'.repeat(512 * 1024 + 1));
    await fails(
      ['secret', 'put', 'app/db/password', '--cas', '1'],
      /FAILED_PRECONDITION: .*is at version 2, not 1/,
      'x',
    );
    await fails(['secret', 'get', 'app/db/password', '--version', '99'], /NOT_FOUND: .*no version 99/);
    // coffer run: the secret reaches the child's environment and nothing else.
    const runResult = await coffer({ ...admin, EXPECTED: values[0]! }, [
      'run',
      '--env',
      'DB_PASSWORD=app/db/password',
      '--',
      'sh',
      '-c',
      'test "$DB_PASSWORD" = "$EXPECTED" && echo match',
    ]);
    assert.equal(runResult.stdout.trim(), 'match');
    assert.ok(!runResult.stdout.includes(values[0]!) && !runResult.stderr.includes(values[0]!));
    const exit = await coffer(admin, ['run', '--env', 'X=app/db/password', '--', 'sh', '-c', 'exit 7']);
    assert.equal(exit.code, 7, "run passes the command's exit code through");

    // Policies and identities: allow, deny, revoke.
    writeFileSync(
      join(root, 'policy.json'),
      JSON.stringify([
        { path: 'app/**', capabilities: ['read', 'list'] },
        { path: 'app/api-key', capabilities: ['read'], deny: true },
      ]),
    );
    await ok(['policy', 'put', 'app-reader', '--file', join(root, 'policy.json')]);
    assert.match(await ok(['policy', 'ls']), /app-reader/);
    const out = join(root, 'reader');
    await ok(['identity', 'issue', 'reader', '--policy', 'app-reader', '--out', out]);
    const reader = readEnv(join(out, 'client.env'));
    assert.equal(await ok(['secret', 'get', 'app/db/password'], '', reader), values[0]);
    await fails(['secret', 'get', 'app/api-key'], /PERMISSION_DENIED: .*denied by policy "app-reader"/, '', reader);
    await fails(['secret', 'put', 'app/db/password'], /PERMISSION_DENIED: .*may not write/, 'x', reader);
    // A policy file holding one rule as an object, not a list: the error says what to write.
    writeFileSync(join(root, 'object.json'), JSON.stringify({ path: 'app/**', capabilities: ['read'] }));
    await fails(
      ['policy', 'put', 'bad', '--file', join(root, 'object.json')],
      /holds an object, not a list of rules: write them as \[\{"path"/,
    );
    // What `policy get --output json` prints is taken back; read without list lists nothing, and says why.
    writeFileSync(
      join(root, 'read-only.json'),
      JSON.stringify({ name: 'app-read-only', rules: [{ path: 'app/**', capabilities: ['read'] }] }),
    );
    await ok(['policy', 'put', 'app-read-only', '--file', join(root, 'read-only.json')]);
    const exported = JSON.parse(await ok(['policy', 'get', 'app-read-only', '--output', 'json'])) as object;
    writeFileSync(join(root, 'exported.json'), JSON.stringify(exported));
    await ok(['policy', 'put', 'app-read-only', '--file', join(root, 'exported.json')]);
    const readOnlyOut = join(root, 'read-only');
    await ok(['identity', 'issue', 'read-only', '--policy', 'app-read-only', '--out', readOnlyOut]);
    const readOnly = readEnv(join(readOnlyOut, 'client.env'));
    assert.equal(await ok(['secret', 'get', 'app/db/password'], '', readOnly), values[0]);
    const listed = await coffer(readOnly, ['secret', 'ls', 'app/']);
    assert.equal(listed.code, 0);
    assert.equal(listed.stdout, '', 'no empty line');
    assert.match(
      listed.stderr,
      /no secrets under app\/ that this identity may list \(listing needs the list capability/,
    );
    await ok(['identity', 'revoke', 'reader']);
    await fails(['secret', 'get', 'app/db/password'], /PERMISSION_DENIED: .*revoked/, '', reader);
    assert.match(await ok(['identity', 'ls']), /reader\tapp-reader\trevoked/);

    // A name that would forge lines and recolour the terminal: the server's error shows it escaped,
    // and it never reaches the audit log (names are checked before they are noted; the tail's own
    // escaping is tested with such a record in test/cli/printable.test.ts).
    const nasty = 'app/\u001b[31mred\n2026-01-01T00:00:00.000Z\tadmin\tSecrets.Get\tforged';
    const refused = await coffer(admin, ['secret', 'put', nasty, '--addr', admin['COFFER_ADDR']!.split(',')[0]!], 'x');
    assert.equal(refused.code, 1);
    assert.match(
      refused.stderr,
      /^coffer: INVALID_ARGUMENT: secret name "app\/\\\\u001b\[31mred\\\\n2026.*\\\\tforged"/,
    );
    // biome-ignore lint/suspicious/noControlCharactersInRegex: no raw ESC may reach the terminal
    assert.doesNotMatch(refused.stderr.trimEnd(), /[\u001b\n]/);

    // Audit: allowed and denied requests are there; verify passes, then finds a tampered record.
    const tail = await ok(['audit', 'tail', '-n', '200', '--addr', admin['COFFER_ADDR']!.split(',')[0]!]);
    assert.match(tail, /admin\tSecrets\.Put\tapp\/db\/password\tallowed\tOK/);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: no raw ESC may reach the terminal
    assert.doesNotMatch(tail, /\u001b|\tforged/, 'no raw escape, and no forged column');
    assert.match(
      tail,
      /\tadmin\tSecrets\.Put\t\tfailed\tINVALID_ARGUMENT$/m,
      'the refused put is audited without its name',
    );
    const tailJson = JSON.parse(
      await ok(['audit', 'tail', '-n', '200', '--output', 'json', '--addr', admin['COFFER_ADDR']!.split(',')[0]!]),
    ) as Array<{ target: string }>;
    assert.ok(
      !tailJson.some((r) => r.target.includes('forged')),
      'JSON output stays JSON, and the invalid name is not in it',
    );
    assert.match(await ok(['audit', 'verify', '--addr', admin['COFFER_ADDR']!.split(',')[0]!]), /audit log intact/);
    const auditDir = join(dir, 'm1', 'audit');
    const copy = join(root, 'audit-copy');
    for (const name of ['audit.log', 'audit.head']) {
      const text = readFileSync(join(auditDir, name), 'utf8');
      mkdirSync(copy, { recursive: true });
      writeFileSync(
        join(copy, name),
        name === 'audit.log' ? text.replace(/"outcome":"denied"/, '"outcome":"allowed"') : text,
      );
    }
    // The chain is keyed: a copy is checked with the key in the manager's key store.
    const verify = await coffer(admin, ['audit', 'verify', '--dir', copy, '--data', join(dir, 'm1')]);
    assert.equal(verify.code, 3);
    assert.match(verify.stdout, /audit log broken at line \d+: its contents were altered/);

    // No value anywhere on disk or in the logs, raw, hex or base64.
    // Killing dev takes its manager processes with it; wait for them before reading their files.
    const managerPids = [...procs.log('dev').matchAll(/ pid (\d+) /g)].map((m) => Number(m[1]));
    assert.equal(managerPids.length, 3);
    await procs.kill('dev');
    await eventually('the managers to stop with dev', 20_000, async () =>
      managerPids.every((pid) => {
        try {
          process.kill(pid, 0);
          return false;
        } catch {
          return true;
        }
      })
        ? true
        : undefined,
    );
    const haystacks = [...filesUnder(dir).map((p) => readFileSync(p)), Buffer.from(procs.log('dev'))];
    for (const value of values) {
      for (const form of [value, Buffer.from(value).toString('hex'), Buffer.from(value).toString('base64')]) {
        assert.ok(!haystacks.some((h) => h.includes(form)), `a value was found in plaintext (${form.slice(0, 6)}...)`);
      }
    }
  } finally {
    await procs.killAll();
    rmSync(root, { recursive: true, force: true });
  }
});
