import { existsSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { createInterface } from 'node:readline';
import { CryptoError } from '../crypto/errors.ts';
import { KeyStore } from '../crypto/key-store.ts';
import { kekFromUnlockKey } from '../crypto/root-key.ts';
import { DataDir } from '../manager/data-dir.ts';

/** Throws (UNLOCK_KEY_MALFORMED / UNLOCK_KEY_WRONG) unless `unlockKey` opens this data directory's root key. */
export async function checkUnlockKey(dataDir: string, unlockKey: string): Promise<void> {
  const store = await KeyStore.read(new DataDir(dataDir).keyStore);
  const kek = kekFromUnlockKey(unlockKey, store.clusterId);
  try {
    store.unlock(kek);
  } finally {
    kek.fill(0);
    store.forget();
  }
}

/**
 * Waits, locked, for `coffer unlock --data DIR`: a unix socket in the data directory (only this
 * manager's user can reach it; the key never crosses the network, as with Swarm's unlock). Each
 * connection sends one line, the unlock key; a wrong key is answered and the wait goes on.
 */
export function waitForUnlockKey(dataDir: string, log: (line: string) => void): Promise<string> {
  const path = new DataDir(dataDir).unlockSocket;
  if (existsSync(path)) rmSync(path); // left by a manager that was killed while it waited
  return new Promise((resolve, reject) => {
    const server = createServer({ allowHalfOpen: false }, (socket) => {
      const lines = createInterface({ input: socket, terminal: false });
      lines.once('line', (line) => {
        const key = line.trim();
        checkUnlockKey(dataDir, key).then(
          () => {
            socket.end('ok: unlocking\n');
            server.close();
            rmSync(path, { force: true });
            resolve(key);
          },
          (error: unknown) => {
            const message =
              error instanceof CryptoError ? `${error.code}: ${error.message}` : 'the key could not be checked';
            socket.end(`error: ${message}\n`);
            log(`unlock refused: ${error instanceof CryptoError ? error.code : 'error'}`);
          },
        );
      });
    });
    server.once('error', reject);
    server.listen(path, () => log(`locked: waiting for the unlock key (coffer unlock --data ${dataDir})`));
  });
}

/** `coffer unlock`: gives a locked manager on this host its unlock key over its socket. */
export function sendUnlockKey(dataDir: string, unlockKey: string): Promise<string> {
  const path = new DataDir(dataDir).unlockSocket;
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    let reply = '';
    socket.on('connect', () => socket.write(`${unlockKey}\n`));
    socket.on('data', (chunk: Buffer) => (reply += chunk.toString()));
    socket.on('end', () => resolve(reply.trim()));
    socket.on('error', (error: NodeJS.ErrnoException) =>
      reject(
        new Error(
          error.code === 'ENOENT' || error.code === 'ECONNREFUSED'
            ? `no manager is waiting to be unlocked at ${dataDir} (is it running, and locked?)`
            : `cannot reach ${path}: ${error.code ?? error.message}`,
        ),
      ),
    );
  });
}
