import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { importsOf } from './imports.ts';

// The dependency arrows of src/ point one way (STYLE: server -> state -> raft; storage and
// transport plug in from outside), and the server layer is composed in one place: services get a
// ServiceContext, never the node. These tests read the import statements, type-only ones
// included: a type import is still a dependency a reader has to follow.

const SRC = join(import.meta.dirname, '../../src');

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...sourceFiles(path));
    else if (name.endsWith('.ts')) out.push(path);
  }
  return out;
}

const files = sourceFiles(SRC);
const folderOf = (file: string): string => relative(SRC, file).split('/')[0]!.replace(/\.ts$/, '');

/** Which folders of src/ each folder may import (besides itself). Anything not listed is refused. */
const ALLOWED: Record<string, readonly string[]> = {
  util: [],
  raft: ['util'],
  codec: ['raft', 'util'],
  crypto: ['codec', 'util'],
  storage: ['codec', 'raft', 'util'],
  kv: ['codec', 'util'],
  replica: ['raft', 'storage', 'util'],
  barrier: ['codec', 'crypto', 'kv', 'raft', 'replica', 'util'],
  manager: ['barrier', 'codec', 'crypto', 'kv', 'raft', 'replica', 'storage', 'util'],
  state: ['barrier', 'codec', 'crypto', 'kv', 'raft', 'util'],
  audit: ['codec', 'crypto', 'util'],
  backup: ['codec', 'crypto', 'kv', 'util'],
  metrics: ['raft', 'replica', 'util'],
  transport: ['codec', 'crypto', 'raft', 'util'],
  client: ['crypto', 'transport', 'util'],
  server: [
    'audit',
    'backup',
    'barrier',
    'codec',
    'crypto',
    'kv',
    'manager',
    'metrics',
    'raft',
    'replica',
    'state',
    'storage',
    'transport',
    'util',
  ],
  cli: ['audit', 'backup', 'client', 'codec', 'crypto', 'manager', 'server', 'state', 'transport', 'util'],
  index: ['client'],
};

test('each folder of src/ imports only the folders below it (the arrows point one way)', () => {
  assert.ok(files.length > 50);
  const problems: string[] = [];
  for (const file of files) {
    const from = folderOf(file);
    const allowed = ALLOWED[from];
    if (allowed === undefined) {
      problems.push(`${relative(SRC, file)}: folder src/${from} has no entry in this test's ALLOWED map; add one`);
      continue;
    }
    for (const target of importsOf(file)) {
      const to = folderOf(target);
      if (to !== from && !allowed.includes(to))
        problems.push(`${relative(SRC, file)} imports src/${relative(SRC, target)}`);
    }
  }
  assert.deepEqual(problems, []);
});

/** The cycles of a directed graph (each as a path that closes on its first node), by DFS. */
export function cyclesOf(graph: ReadonlyMap<string, readonly string[]>): string[][] {
  const cycles: string[][] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (node: string): void => {
    state.set(node, 'open');
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      if (state.get(next) === 'open') cycles.push([...stack.slice(stack.indexOf(next)), next]);
      else if (state.get(next) === undefined) visit(next);
    }
    stack.pop();
    state.set(node, 'done');
  };
  for (const node of [...graph.keys()].sort()) if (state.get(node) === undefined) visit(node);
  return cycles;
}

test('no import circle anywhere in src/: not between folders, not between files', () => {
  const fileGraph = new Map(files.map((f) => [relative(SRC, f), importsOf(f).map((t) => relative(SRC, t))]));
  assert.deepEqual(
    cyclesOf(fileGraph).map((c) => c.join(' -> ')),
    [],
  );
  const folderGraph = new Map<string, string[]>();
  for (const [file, targets] of fileGraph) {
    const from = file.split('/')[0]!;
    const list = folderGraph.get(from) ?? [];
    for (const t of targets) if (t.split('/')[0] !== from) list.push(t.split('/')[0]!);
    folderGraph.set(from, list);
  }
  assert.deepEqual(
    cyclesOf(folderGraph).map((c) => c.join(' -> ')),
    [],
  );
});

test('the server layer: services and the request edge get a context, never the node; only the composition knows it', () => {
  const server = files.filter((f) => folderOf(f) === 'server');
  const node = join(SRC, 'server/node.ts');
  const services = join(SRC, 'server/services.ts');
  const handlerFiles = server.filter((f) =>
    /-service\.ts$|\/rpc\.ts$|\/health\.ts$|\/membership\.ts$|\/context\.ts$/.test(f),
  );
  assert.ok(handlerFiles.length >= 10, `found ${handlerFiles.length} handler files`);
  for (const file of handlerFiles) {
    const imports = importsOf(file);
    assert.ok(
      !imports.includes(node),
      `${relative(SRC, file)} imports the node: give it what it needs through the context`,
    );
    assert.ok(!imports.includes(services), `${relative(SRC, file)} imports the service registry`);
  }
  // Nothing in src/server imports node.ts: it is the composition, and only the CLI starts one.
  const importersOfNode = files
    .filter((f) => importsOf(f).includes(node))
    .map((f) => relative(SRC, f))
    .sort();
  assert.deepEqual(
    importersOfNode.filter((f) => !f.startsWith('cli/')),
    [],
  );
  // Every service file (and context.ts) is imported by the registry or the composition, not by peers.
  for (const file of server.filter((f) => f.endsWith('-service.ts'))) {
    const importers = server
      .filter((f) => importsOf(f).includes(file))
      .map((f) => relative(SRC, f))
      .sort();
    for (const importer of importers)
      assert.match(
        importer,
        /^server\/(services|cluster-service)\.ts$/,
        `${relative(SRC, file)} is imported by ${importer}`,
      );
  }
});

test('the import reader sees static, type-only, multi-line, dynamic and re-export imports, and skips comments', () => {
  const text = [
    "import { a } from './a.ts';",
    "import type { B } from '../b/b.ts';",
    'import {',
    '  c,',
    "} from './c.ts';",
    "export { d } from './d.ts';",
    "const e = await import('./e.ts');",
    "import './f.ts';",
    "// import { g } from './g.ts';",
    "/* import { h } from './h.ts'; */",
    "import { i } from 'node:fs';",
  ].join('\n');
  const found = importsOf('/x/src/server/file.ts', text).map((p) => relative('/x/src', p));
  assert.deepEqual(found, ['server/a.ts', 'b/b.ts', 'server/c.ts', 'server/d.ts', 'server/e.ts', 'server/f.ts']);
  assert.deepEqual(
    cyclesOf(
      new Map([
        ['a', ['b']],
        ['b', ['c']],
        ['c', ['a']],
        ['d', ['a']],
      ]),
    ),
    [['a', 'b', 'c', 'a']],
  );
  assert.deepEqual(
    cyclesOf(
      new Map([
        ['a', ['b']],
        ['b', []],
      ]),
    ),
    [],
  );
});
