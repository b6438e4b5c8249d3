/**
 * A small seeded pseudo-random generator (xoshiro128**, seeded through splitmix32). Every source
 * of randomness in the Raft core and the simulator is one of these, so one seed reproduces a
 * whole run. Not for cryptography: keys and nonces come from node:crypto.
 */
export interface Random {
  /** An integer in [0, bound). */
  int(bound: number): number;
  /** A float in [0, 1). */
  float(): number;
}

export class SeededRandom implements Random {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  constructor(seed: number) {
    if (!Number.isSafeInteger(seed)) throw new TypeError(`seed must be a safe integer: got ${seed}`);
    // splitmix32 over both halves of the seed fills the 128-bit state; never all zero.
    let s = (seed ^ Math.floor(seed / 0x1_0000_0000)) >>> 0;
    const next = (): number => {
      s = (s + 0x9e3779b9) | 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.#a = next();
    this.#b = next();
    this.#c = next();
    this.#d = next() | 1;
  }

  #next(): number {
    const result = Math.imul(rotl(Math.imul(this.#b, 5), 7), 9) >>> 0;
    const t = this.#b << 9;
    this.#c ^= this.#a;
    this.#d ^= this.#b;
    this.#b ^= this.#c;
    this.#a ^= this.#d;
    this.#c ^= t;
    this.#d = rotl(this.#d, 11);
    return result;
  }

  float(): number {
    return this.#next() / 0x1_0000_0000;
  }

  int(bound: number): number {
    if (!Number.isSafeInteger(bound) || bound <= 0) {
      throw new TypeError(`bound must be a positive safe integer: got ${bound}`);
    }
    return Math.floor(this.float() * bound);
  }

  /** A child generator whose stream depends only on this one's next draw. */
  fork(): SeededRandom {
    return new SeededRandom(this.#next() * 0x1_0000 + (this.#next() & 0xffff));
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
