import type { LocalKeys } from '../barrier/barrier.ts';
import type { KeyStore } from '../crypto/key-store.ts';

/** LocalKeys over the key store, holding the KEK that opened it (needed to rewrap). */
export class KeyStoreLocalKeys implements LocalKeys {
  readonly #store: KeyStore;
  #kek: Buffer;

  constructor(store: KeyStore, kek: Buffer) {
    this.#store = store;
    this.#kek = Buffer.from(kek);
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
    const kek = options.unlockKek ?? this.#kek;
    await this.#store.rewrap({
      rootGen: options.rootGen,
      rootKey: options.rootKey,
      kek,
      oldKek: this.#kek,
      protection: options.unlockKek === null ? this.#store.protection : 'unlock-key',
      unlockGen: options.unlockGen,
    });
    if (options.unlockKek !== null) {
      this.#kek.fill(0);
      this.#kek = Buffer.from(options.unlockKek);
    }
  }

  /** The KEK currently protecting the key store (for sealing local secrets). */
  get kek(): Buffer {
    return this.#kek;
  }

  forget(): void {
    this.#kek.fill(0);
  }
}
