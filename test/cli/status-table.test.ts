import { test } from 'node:test';
import assert from 'node:assert/strict';
import { membersTable, type MemberStatusReply } from '../../src/cli/admin-commands.ts';

const member = (nodeId: number, address: string, role: string, extra: Partial<MemberStatusReply> = {}) => ({
  nodeId,
  address,
  role,
  healthy: true,
  matchIndex: 120,
  lag: 0,
  held: false,
  ...extra,
});
const own = (term: number, commitIndex: number) => ({
  term,
  commitIndex,
  appliedIndex: commitIndex,
  certificateNotAfterMs: Date.UTC(2026, 0, 31),
  clockOffsetMs: term === 3 ? 300_000 : 12,
});

test('cluster status: every cell of the members table starts under its header, with long and short node ids', () => {
  const members = [
    member(829408580, '10.0.0.1:7001', 'leader'),
    member(1, '127.0.0.1:7002', 'voter', { matchIndex: 7, lag: 113 }),
    member(42, 'manager-three.example.internal:7003', 'learner', { held: true, healthy: false, matchIndex: 0 }),
  ];
  const lines = membersTable(members, [own(12, 1234567), own(3, 9), null]);
  assert.equal(lines.length, 4);
  const header = lines[0]!;
  const names = header.split(/\s{2,}/);
  assert.deepEqual(names, [
    'NODE',
    'ADDRESS',
    'ROLE',
    'HEALTH',
    'MATCH',
    'LAG',
    'TERM',
    'COMMIT/APPLIED',
    'HOST-CLOCK',
    'CERT-EXPIRES',
  ]);
  const starts = names.map((name) => header.indexOf(name));
  const cells = [
    ['829408580', '10.0.0.1:7001', 'leader', 'healthy', '120', '0', '12', '1234567/1234567', 'in step', '2026-01-31'],
    ['1', '127.0.0.1:7002', 'voter', 'healthy', '7', '113', '3', '9/9', '-300.0 s off', '2026-01-31'],
    [
      '42',
      'manager-three.example.internal:7003',
      'learner (held)',
      'unreachable',
      '0',
      '0',
      '-',
      '-',
      '-',
      'no answer (down or locked)',
    ],
  ];
  for (const [r, row] of cells.entries()) {
    const line = lines[r + 1]!;
    for (const [k, cell] of row.entries())
      assert.equal(
        line.slice(starts[k], starts[k]! + cell.length),
        cell,
        `row ${r + 1}, column ${names[k]}:\n${header}\n${line}`,
      );
    // Nothing but padding between cells: a cell does not run into the next column.
    for (const [k, cell] of row.entries())
      if (k + 1 < row.length) assert.match(line.slice(starts[k]! + cell.length, starts[k + 1]), /^ {2,}$/, line);
  }
});
