import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';

// Documents and comments must point at files the repository holds: a design note that lived
// outside it (a DESIGN.md nobody could open) was cited for months. This test reads README.md,
// docs/**/*.md and src/**/*.ts and checks every path they name under the repository's top-level
// folders, every *.md file they name, and every section of docs/design.md they cite by name.

const root = resolve(import.meta.dirname, '../..');

function filesUnder(dir: string, suffix: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...filesUnder(path, suffix));
    else if (name.endsWith(suffix)) out.push(path);
  }
  return out;
}

/** The files whose references are checked. */
function scannedFiles(): string[] {
  return [join(root, 'README.md'), ...filesUnder(join(root, 'docs'), '.md'), ...filesUnder(join(root, 'src'), '.ts')];
}

/**
 * A path under one of the repository's top-level folders, ending in a file name with an extension
 * or in `/` (a folder), optionally after `./` or `../` (then it is relative to the file that names
 * it). Not preceded by a word character, `.`, `/` or `-`, so URLs (`https://host/src/x.ts`),
 * policy paths (`sys/cluster`) and paths inside other paths are not taken; not followed by a word
 * character, `*` or `/`, so globs (`test/**\/*.ts`) and extension-less names are not taken.
 */
const PREFIXED_PATH =
  /(?<![\w./-])((?:\.\.?\/)*(?:src|test|docs|scripts|proto|cluster)\/(?:[\w.-]+\/)*(?:[\w-][\w.-]*\.[A-Za-z0-9]+)?)(?![\w*/-])/g;
/** Any file name ending in `.md`, with the folders before it; not code such as `forge.md.sha256`. */
const MARKDOWN_FILE = /(?<![\w./-])((?:\.\.?\/)*(?:[\w.-]+\/)*[\w-][\w.-]*\.md)(?![\w(-]|\.\w)/gi;
/** A URL, removed before scanning: what it names is not a file of this repository. */
const URL = /\b[a-z][a-z0-9+.-]*:\/\/[^\s)>\]`'"]+/gi;

interface Reference {
  readonly file: string;
  readonly line: number;
  readonly text: string;
}

/** Every path reference in `text` (the content of `file`). */
function referencesIn(file: string, text: string): Reference[] {
  const out: Reference[] = [];
  const lines = text.split('\n');
  lines.forEach((raw, k) => {
    const line = raw.replace(URL, (url) => ' '.repeat(url.length));
    // By position: `docs/x.md` matches both patterns at the same place and is one reference.
    const found = new Map<number, string>();
    for (const pattern of [PREFIXED_PATH, MARKDOWN_FILE]) {
      for (const match of line.matchAll(pattern)) if (!found.has(match.index!)) found.set(match.index!, match[1]!);
    }
    for (const [, text] of [...found].sort(([a], [b]) => a - b)) out.push({ file, line: k + 1, text });
  });
  return out;
}

/** Where a reference points: `./` and `../` from the naming file's folder, anything else from the repository root. */
function resolveReference(ref: Reference): string {
  return ref.text.startsWith('./') || ref.text.startsWith('../')
    ? resolve(dirname(ref.file), ref.text)
    : resolve(root, ref.text);
}

/** Why a reference is broken, or null. */
function brokenReference(ref: Reference): string | null {
  const target = resolveReference(ref);
  const where = `${relative(root, ref.file)}:${ref.line}`;
  if (target !== root && !target.startsWith(root + sep)) return `${where} points outside the repository: ${ref.text}`;
  if (!existsSync(target)) return `${where} points at ${ref.text}, which does not exist`;
  if (ref.text.endsWith('/') && !statSync(target).isDirectory())
    return `${where} names ${ref.text} as a folder, but it is a file`;
  return null;
}

function allReferences(): Reference[] {
  return scannedFiles().flatMap((file) => referencesIn(file, readFileSync(file, 'utf8')));
}

/** Headings of a Markdown file, as written and as GitHub anchors. */
function headingsOf(path: string): { titles: Set<string>; anchors: Set<string> } {
  const titles = new Set<string>();
  const anchors = new Set<string>();
  let fenced = false;
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (line.startsWith('```')) fenced = !fenced;
    const match = fenced ? null : /^#{1,6} (.+)$/.exec(line);
    if (match === null) continue;
    const title = match[1]!.trim();
    titles.add(title);
    anchors.add(
      title
        .toLowerCase()
        .replace(/[^\p{L}\p{N} _-]/gu, '')
        .replace(/ /g, '-'),
    );
  }
  return { titles, anchors };
}

test('the scanner finds references, and skips URLs, globs, policy paths and code', () => {
  const file = join(root, 'README.md');
  const found = (text: string): string[] => referencesIn(file, text).map((r) => r.text);
  assert.deepEqual(found('see `src/raft/config.ts`, the folder src/raft/ and [design](docs/design.md).'), [
    'src/raft/config.ts',
    'src/raft/',
    'docs/design.md',
  ]);
  assert.deepEqual(found('at https://github.com/o/r/blob/main/src/raft/x.ts and https://x.org/README.md'), []);
  assert.deepEqual(found('scan test/**/*.test.ts and src/**/*.ts'), []);
  assert.deepEqual(found('`sudo` on `sys/cluster`, `sys/keys/`; cluster/Dockerfile'), []);
  assert.deepEqual(found('cert.sign(key, forge.md.sha256.create())'), []);
  assert.deepEqual(found('read DESIGN.md, then ../shared/DESIGN.md'), ['DESIGN.md', '../shared/DESIGN.md']);
});

test('a reference to a file that does not exist is reported', () => {
  const file = join(root, 'src/raft/config.ts');
  const [missing, outside, present] = referencesIn(
    file,
    'see src/raft/no-such-file.ts and ../../../elsewhere/DESIGN.md and ../../src/raft/config.ts',
  );
  assert.match(
    brokenReference(missing!) ?? '',
    /src\/raft\/config\.ts:1 points at src\/raft\/no-such-file\.ts, which does not exist/,
  );
  assert.match(brokenReference(outside!) ?? '', /points outside the repository/);
  assert.equal(brokenReference(present!), null);
});

test('every path and Markdown file named in README.md, docs/ and src/ exists in the repository', () => {
  const refs = allReferences();
  assert.ok(refs.length > 50, `only ${refs.length} references found: is the scanner broken?`);
  const broken = refs.map(brokenReference).filter((problem): problem is string => problem !== null);
  assert.deepEqual(broken, []);
});

test('DESIGN.md is named only where the name resolves to a file of the repository', () => {
  const mentions: string[] = [];
  for (const file of scannedFiles()) {
    readFileSync(file, 'utf8')
      .split('\n')
      .forEach((line, k) => {
        if (!/design\.md/i.test(line)) return;
        const resolved = referencesIn(file, line).filter(
          (r) => /design\.md$/i.test(r.text) && brokenReference(r) === null,
        );
        // Every mention on the line must be one of the references that resolve.
        const count = (line.match(/design\.md/gi) ?? []).length;
        if (resolved.length < count) mentions.push(`${relative(root, file)}:${k + 1}: ${line.trim()}`);
      });
  }
  assert.deepEqual(mentions, []);
  assert.ok(existsSync(join(root, 'docs/design.md')), 'docs/design.md holds the design notes');
});

test('sections of docs/design.md cited by name or anchor exist', () => {
  const design = join(root, 'docs/design.md');
  const { titles, anchors } = headingsOf(design);
  const problems: string[] = [];
  for (const file of scannedFiles()) {
    readFileSync(file, 'utf8')
      .split('\n')
      .forEach((line, k) => {
        const where = `${relative(root, file)}:${k + 1}`;
        // `docs/design.md, "Limits"` and `[docs/design.md](docs/design.md), "PKI and identities"`
        for (const match of line.matchAll(/design\.md\)?, "([^"]+)"/g)) {
          if (!titles.has(match[1]!))
            problems.push(`${where} cites section "${match[1]}" of docs/design.md, which has no such heading`);
        }
        for (const match of line.matchAll(/design\.md#([\w-]+)/g)) {
          if (!anchors.has(match[1]!))
            problems.push(`${where} links to docs/design.md#${match[1]}, which has no such heading`);
        }
        if (file === design) {
          for (const match of line.matchAll(/\]\(#([\w-]+)\)/g)) {
            if (!anchors.has(match[1]!)) problems.push(`${where} links to #${match[1]}, which has no such heading`);
          }
        }
      });
  }
  assert.deepEqual(problems, []);
});
