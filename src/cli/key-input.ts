import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { formatUnlockKey } from '../crypto/unlock-key.ts';

/** One line from stdin (prompted on a terminal), trimmed; rejects if stdin closes first. */
export function readKeyLine(prompt: string, what = 'the key'): Promise<string> {
  if (process.stdin.isTTY) process.stderr.write(prompt);
  const lines = createInterface({ input: process.stdin, terminal: false });
  return new Promise((resolve, reject) => {
    lines.once('line', (line) => {
      resolve(line.trim()); // before close(), which emits 'close' at once
      lines.close();
    });
    lines.once('close', () => reject(new Error(`stdin closed before ${what} was given`)));
  });
}

function readFileOrSay(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    throw new Error(`cannot read the ${what} file ${path}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/** A key written as text in a file (a recovery key), trimmed. */
export function readTextKeyFile(path: string, what: string): string {
  return readFileOrSay(path, what).toString('utf8').trim();
}

/**
 * An unlock key from a file: its text (CFRKEY-1-...), or exactly 32 random bytes (what
 * scripts/compose-secrets.sh writes for Docker secrets), which stand for the key they encode.
 */
export function readUnlockKeyFile(path: string): string {
  const bytes = readFileOrSay(path, 'unlock key');
  if (bytes.byteLength === 32 && !bytes.toString('latin1').startsWith('CFRKEY')) return formatUnlockKey(bytes);
  return bytes.toString('utf8').trim();
}
