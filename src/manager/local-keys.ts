import type { LocalKeys } from '../barrier/barrier.ts';
import type { KeyStore } from '../crypto/key-store.ts';
import { adoptOrCreateKeyFile } from '../crypto/root-key.ts';

/** LocalKeys over an unlocked key store (which holds the KEK it was opened with). */
export class KeyStoreLocalKeys implements LocalKeys {
  readonly #store: KeyStore;
  /** Where this manager's key file is (or goes, when autolock is turned off). */
  readonly #keyFile: string | null;

  constructor(store: KeyStore, keyFile: string | null = null) {
    this.#store = store;
    this.#keyFile = keyFile;
  }

  get rootGen(): number {
    return this.#store.rootGen;
  }

  get unlockGen(): number {
    return this.#store.unlockGen;
  }

  usesReserved(term: number): number {
    return this.#store.usesReserved(term);
  }

  reserveUses(term: number, uses: number, liveTerms: readonly number[]): Promise<void> {
    return this.#store.reserveUses(term, uses, liveTerms);
  }

  async rewrap(options: {
    rootGen: number;
    rootKey: Buffer;
    unlockGen: number;
    unlockKek: Buffer | null;
    autolockOff?: boolean;
  }): Promise<void> {
    if (options.autolockOff === true && this.#store.protection === 'unlock-key') {
      // The key file first: a crash before the key store moves leaves it to be adopted next time.
      if (this.#keyFile === null)
        throw new Error('autolock is being turned off, but this manager was given no key file path');
      const kek = adoptOrCreateKeyFile(this.#keyFile).kek;
      try {
        await this.#store.rewrap({
          rootGen: options.rootGen,
          rootKey: options.rootKey,
          kek,
          protection: 'key-file',
          unlockGen: options.unlockGen,
        });
      } finally {
        kek.fill(0);
      }
      return;
    }
    await this.#store.rewrap({
      rootGen: options.rootGen,
      rootKey: options.rootKey,
      kek: options.unlockKek,
      protection: options.unlockKek === null ? this.#store.protection : 'unlock-key',
      unlockGen: options.unlockGen,
    });
  }

  /** The KEK currently protecting the key store (to publish an unlock key). */
  get kek(): Buffer {
    return this.#store.kek;
  }

  forget(): void {
    this.#store.forget();
  }
}
