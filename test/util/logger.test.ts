import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { createLogger, logFormat, REDACTED_KEYS, REDACTION_CENSOR } from '../../src/util/logger.ts';

function capture(): { lines: string[]; stream: Writable } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(chunk.toString('utf8'));
      callback();
    },
  });
  return { lines, stream };
}

test('secret-bearing fields are redacted at the top level and one or two objects deep', () => {
  const { lines, stream } = capture();
  const log = createLogger({ destination: stream, level: 'debug' });
  const secrets: string[] = [];
  for (const key of REDACTED_KEYS) {
    const a = randomBytes(12).toString('hex');
    const b = randomBytes(12).toString('hex');
    const c = randomBytes(12).toString('hex');
    secrets.push(a, b, c);
    log.info({ [key]: a, request: { [key]: b }, outer: { inner: { [key]: c } } }, 'request handled');
  }
  assert.equal(lines.length, REDACTED_KEYS.length);
  const all = lines.join('');
  for (const secret of secrets) {
    assert.ok(!all.includes(secret), `a secret value reached the log: ${secret.slice(0, 4)}…`);
    assert.ok(!all.includes(Buffer.from(secret).toString('base64')), 'a secret value reached the log in base64');
  }
  assert.ok(all.includes(REDACTION_CENSOR));
});

test('fields that carry no secret are logged as they are', () => {
  const { lines, stream } = capture();
  createLogger({ destination: stream, component: 'server' }).info(
    { method: 'Get', name: 'db/password', status: 'OK' },
    'done',
  );
  const line = JSON.parse(lines[0]!) as Record<string, unknown>;
  assert.equal(line['method'], 'Get');
  assert.equal(line['name'], 'db/password');
  assert.equal(line['component'], 'server');
});

test('log format: JSON for machines, pretty on a terminal, COFFER_LOG_FORMAT decides when set', () => {
  assert.equal(logFormat({}, false), 'json');
  assert.equal(logFormat({}, true), 'pretty');
  assert.equal(logFormat({ COFFER_LOG_FORMAT: 'json' }, true), 'json');
  assert.equal(logFormat({ COFFER_LOG_FORMAT: 'pretty' }, false), 'pretty');
});

test('pretty lines are redacted as JSON lines are, and readable', () => {
  const { lines, stream } = capture();
  const secret = randomBytes(12).toString('hex');
  createLogger({ destination: stream, format: 'pretty', component: 'server' }).info(
    { method: 'Secrets.Put', value: secret, request: { password: secret } },
    'request',
  );
  const all = lines.join('');
  assert.ok(!all.includes(secret), 'a secret value reached a pretty log line');
  assert.ok(all.includes(REDACTION_CENSOR));
  assert.match(all, /INFO.*request/);
  assert.match(all, /Secrets\.Put/);
  assert.throws(() => JSON.parse(all.trim()), 'pretty lines are not JSON');
});

test('coffer server on a terminal (a pseudo-terminal from script) logs pretty lines; on a pipe, JSON lines', {
  timeout: 90_000,
}, async () => {
  const { spawn } = await import('node:child_process');
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { coffer, freePort } = await import('../processes/processes.ts');
  const root = mkdtempSync(join(tmpdir(), 'coffer-pretty-'));
  const cli = join(import.meta.dirname, '../../src/cli/main.ts');
  // Runs `coffer server` until it says it serves; returns what it wrote.
  const serve = (viaTerminal: boolean): Promise<string> =>
    new Promise((resolve, reject) => {
      const command = [process.execPath, '--import', 'tsx', cli, 'server', '--data', join(root, 'm1')];
      const env = { ...process.env, COFFER_LOG_FORMAT: '' };
      const child = viaTerminal
        ? spawn('script', ['-qec', command.join(' '), '/dev/null'], { env, detached: true })
        : spawn(command[0]!, command.slice(1), { env, detached: true });
      let out = '';
      const timer = setTimeout(() => finish(new Error(`no "serving" line in 30 s:\n${out}`)), 30_000);
      const finish = (error?: Error): void => {
        clearTimeout(timer);
        try {
          process.kill(-child.pid!, 'SIGKILL'); // the whole group: script and the manager under it
        } catch {
          // already gone
        }
        child.once('exit', () => (error === undefined ? resolve(out) : reject(error)));
      };
      child.stdout!.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        if (/serving on/.test(out)) finish();
      });
    });
  try {
    const init = await coffer([
      'init',
      '--data',
      join(root, 'm1'),
      '--listen',
      `127.0.0.1:${await freePort()}`,
      '--output',
      'json',
    ]);
    assert.equal(init.code, 0, init.stderr);
    const pretty = await serve(true);
    assert.match(pretty, /INFO.*manager 1 serving on/);
    assert.ok(
      !pretty.split('\n').some((line) => line.trim().startsWith('{"level"')),
      `no JSON line on a terminal:\n${pretty}`,
    );
    const json = await serve(false);
    const line = json.split('\n').find((l) => l.includes('serving on'))!;
    assert.equal((JSON.parse(line) as { event: string }).event, 'started');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
