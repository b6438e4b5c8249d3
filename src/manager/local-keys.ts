import type { LocalKeys } from '../barrier/barrier.ts';
import type { KeyStore } from '../crypto/key-store.ts';

/** LocalKeys over an unlocked key store (which holds the KEK it was opened with). */
export class KeyStoreLocalKeys implements LocalKeys {
  readonly #store: KeyStore;

  constructor(store: KeyStore) {
    this.#store = store;
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

  async rewrap(options: { rootGen: number; rootKey: Buffer; unlockGen: number; unlockKek: Buffer | null }): Promise<void> {
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
