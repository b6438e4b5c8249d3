import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuditLog } from '../../src/audit/audit-log.ts';
import { formatAuditTail } from '../../src/cli/admin-commands.ts';
import { printable, printableJson } from '../../src/cli/printable.ts';

/** Anything that acts on a terminal or fakes a line or a column: none may reach it raw. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: the test looks for raw control characters on purpose
const RAW = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]/;

const NASTY = [
  'app/x\n2026-01-01T00:00:00.000Z\tadmin\tSecrets.Get\tapp/db\tallowed\tOK', // a forged line
  'app/\u001b[2J\u001b[31mred\u001b[0m', // clear the screen, colour
  'app/\u001b]0;title\u0007', // OSC: set the window title
  'app/\u009b31m', // C1 CSI
  'app/\u202egnp.exe', // right-to-left override
  'a\u2028b\u2029c\r\bd\u007f\u0000', // line and paragraph separators, CR, backspace, DEL, NUL
  'ad\u200bmin\ufeff', // invisible characters
  'back\\nslash', // a literal backslash-n must not read as an escaped newline
];

test('printable: control, bidi and separator characters become visible escapes; a backslash is doubled; other text is kept', () => {
  assert.equal(printable('app/x\n\t\u001b[31m\u202e\\'), 'app/x\\n\\t\\x1b[31m\\u202e\\\\');
  assert.equal(printable('\u009b\u007f\u0000\u2028'), '\\x9b\\x7f\\x00\\u2028');
  assert.equal(printable('app/db/password'), 'app/db/password');
  assert.equal(printable('clé/日本語/пароль/🔑'), 'clé/日本語/пароль/🔑');
  for (const nasty of NASTY) {
    const shown = printable(nasty);
    assert.doesNotMatch(shown, RAW, JSON.stringify(shown));
    assert.notEqual(shown, nasty);
  }
  assert.notEqual(printable('a\nb'), printable('a\\nb'), 'an escape cannot be faked');
});

test('printableJson: the same value as JSON, with nothing raw in it', () => {
  const value = { names: NASTY, n: 1 };
  const json = printableJson(JSON.stringify(value));
  assert.doesNotMatch(json, RAW);
  assert.deepEqual(JSON.parse(json), value);
});

test('audit tail text: a record whose fields hold newlines, tabs and escapes prints as one line of six columns', async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-printable-'));
  try {
    const log = await AuditLog.open(join(root, 'audit'), 1, randomBytes(32), { newLog: true });
    for (const [k, target] of NASTY.entries()) {
      await log.append({
        identity: k === 0 ? 'evil\u001b[1A\u001b[2K' : '',
        role: '',
        method: 'Secrets.Get',
        target,
        outcome: 'denied',
        code: 'UNAUTHENTICATED',
      });
    }
    const records = (await log.tail(100)) as unknown as Array<Record<string, unknown>>;
    await log.close();
    const text = formatAuditTail(records);
    const lines = text.split('\n');
    assert.equal(lines.length, NASTY.length, 'one line per record');
    for (const [k, line] of lines.entries()) {
      const columns = line.split('\t');
      assert.equal(columns.length, 6, line);
      for (const column of columns) assert.doesNotMatch(column, RAW, line);
      assert.equal(columns[3], printable(NASTY[k]));
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
