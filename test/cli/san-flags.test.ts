import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { coffer } from '../processes/processes.ts';

test('coffer init --san puts the names in the first manager certificate and node.json (kept for renewals); bad names, too many, and --san on a plain server start are refused with the reason', {
  timeout: 60_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-san-'));
  try {
    const wildcard = await coffer(['init', '--data', join(root, 'a'), '--listen', '127.0.0.1:7401', '--san', '*.x']);
    assert.equal(wildcard.code, 1);
    assert.match(wildcard.stderr, /option '--san <name>' argument '\*\.x' is invalid\. "\*\.x" is a wildcard/);
    const many = Array.from({ length: 17 }, (_, k) => ['--san', `m${k}.example`]).flat();
    const tooMany = await coffer(['init', '--data', join(root, 'a'), '--listen', '127.0.0.1:7401', ...many]);
    assert.equal(tooMany.code, 1);
    assert.match(tooMany.stderr, /at most 16 names: m16\.example is one more/);
    const plain = await coffer(['server', '--data', join(root, 'a'), '--san', 'coffer.example']);
    assert.equal(plain.code, 1);
    assert.match(plain.stderr, /--san is only for joining: it needs --join/);

    const made = await coffer([
      'init',
      '--data',
      join(root, 'm1'),
      '--listen',
      '0.0.0.0:7401',
      '--advertise',
      'm1:7400',
      '--san',
      'localhost',
      '--san',
      '127.0.0.1',
      '--san',
      'Coffer.Example',
      '--output',
      'json',
    ]);
    assert.equal(made.code, 0, made.stderr);
    const cert = new X509Certificate(readFileSync(join(root, 'm1', 'tls', 'node.crt')));
    assert.equal(cert.subjectAltName, 'DNS:m1, DNS:localhost, IP Address:127.0.0.1, DNS:coffer.example');
    const config = JSON.parse(readFileSync(join(root, 'm1', 'node.json'), 'utf8')) as { extraHosts: string[] };
    assert.deepEqual(config.extraHosts, ['localhost', '127.0.0.1', 'coffer.example']);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('join and server --join take the same joining and serving options (declared once), --san among them', {
  timeout: 30_000,
}, async () => {
  const options = (help: string) =>
    [...help.matchAll(/^ {2}(--[a-z-]+)/gm)].map((m) => m[1]!).filter((o) => o !== '--help');
  const join = options((await coffer(['join', '--help'])).stdout);
  const server = options((await coffer(['server', '--help'])).stdout);
  const shared = [
    '--advertise',
    '--san',
    '--token',
    '--token-file',
    '--join-retry',
    '--snapshot-every',
    '--snapshot-tail',
    '--metrics-listen',
    '--identity-requests-per-second',
    '--identity-write-bytes-per-minute',
  ];
  for (const option of shared) {
    assert.ok(join.includes(option), `join has ${option}`);
    assert.ok(server.includes(option), `server has ${option}`);
  }
  assert.match((await coffer(['server', '--help'])).stdout, /--san <name> +with --join: another name/);
});
