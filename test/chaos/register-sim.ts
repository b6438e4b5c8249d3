import type { SeededRandom } from '../../src/util/prng.ts';
import type { Operation } from './linearizability.ts';

/**
 * Histories of one key from a simulated correct register, for testing the checkers: each operation
 * takes effect at one instant strictly inside its interval (so ties between integer timestamps
 * never matter); an unknown outcome takes effect at any later instant, possibly much later, or
 * never; a cas expects the current version or a nearby one, and fails when it is not current.
 */
export interface SimOptions {
  readonly ops: number;
  readonly processes: number;
  /** Probability that a write's outcome is unknown. */
  readonly infoRate: number;
  readonly maxDuration: number;
  readonly maxInfoDelay: number;
  /** Integer times (ties between operations happen) rather than fractional ones. */
  readonly integerTimes?: boolean;
  readonly key?: string;
  readonly firstId?: number;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

export function simulateRegister(random: SeededRandom, options: SimOptions): Operation[] {
  const key = options.key ?? 'k';
  let id = options.firstId ?? 1;
  const ops: Array<Mutable<Operation>> = [];
  const effects: Array<{ at: number; apply: () => void }> = [];
  const clock = new Array<number>(options.processes).fill(0);
  const state = { version: 0, value: null as string | null };
  const time = (t: number): number => (options.integerTimes === true ? Math.floor(t) : t);
  for (let n = 0; n < options.ops; n++) {
    const process = random.int(options.processes);
    const invokeMs = time(clock[process]! + random.float() * 3);
    const completeMs = time(invokeMs + 1 + random.float() * options.maxDuration);
    clock[process] = completeMs + (options.integerTimes === true ? 0 : 0.01);
    const at =
      invokeMs +
      (options.integerTimes === true
        ? 0.5 + random.int(Math.max(1, completeMs - invokeMs - 1)) + random.float() * 0.4
        : random.float() * (completeMs - invokeMs));
    const roll = random.float();
    const value = `v${id}`;
    if (roll < 0.5) {
      const kind = roll < 0.3 ? 'put' : 'cas';
      const info = random.float() < options.infoRate;
      const op: Mutable<Operation> = {
        id: id++,
        process,
        key,
        kind,
        value,
        invokeMs,
        completeMs: info ? Infinity : completeMs,
        outcome: info ? 'info' : 'ok',
      };
      ops.push(op);
      const infoAt = invokeMs + random.float() * options.maxInfoDelay;
      const applies = !info || random.float() < 0.6;
      if (!applies) {
        if (kind === 'cas') op.expectedVersion = random.int(3);
        continue;
      }
      effects.push({
        at: info ? infoAt : at,
        apply: () => {
          if (kind === 'cas') {
            // Expect the current version most of the time, or one nearby (which fails).
            const offset = random.float() < 0.6 ? 0 : random.int(3) - 1;
            op.expectedVersion = Math.max(0, state.version + offset);
            if (op.expectedVersion !== state.version) {
              if (!info) op.outcome = 'fail';
              delete op.version;
              return;
            }
          }
          state.version += 1;
          state.value = value;
          if (!info) op.version = state.version;
        },
      });
    } else {
      const op: Mutable<Operation> = {
        id: id++,
        process,
        key,
        kind: 'get',
        invokeMs,
        completeMs,
        outcome: 'ok',
        version: 0,
        readValue: null,
      };
      ops.push(op);
      effects.push({
        at,
        apply: () => {
          op.version = state.version;
          op.readValue = state.value;
        },
      });
    }
  }
  for (const effect of effects.sort((a, b) => a.at - b.at)) effect.apply();
  return ops;
}
