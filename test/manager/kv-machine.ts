import { Packr } from 'msgpackr';
import type { InnerStateMachine } from '../../src/barrier/barrier.ts';

const packr = new Packr({ useRecords: false, moreTypes: false });

/** A key/value map behind the barrier: `kv.put` with `[key, value]`; apply returns the count of puts. */
export class KvMachine implements InnerStateMachine<number> {
  map = new Map<string, string>();
  puts = 0;

  apply(command: { index: number; kind: string; data: Buffer }): number {
    if (command.kind !== 'kv.put') throw new Error(`unknown command ${command.kind}`);
    const [key, value] = packr.unpack(command.data) as [string, string];
    this.map.set(key, value);
    return ++this.puts;
  }

  snapshot(): Uint8Array {
    return packr.pack([this.puts, [...this.map]]);
  }

  restore(data: Uint8Array): void {
    const [puts, entries] = packr.unpack(data) as [number, Array<[string, string]>];
    this.puts = puts;
    this.map = new Map(entries);
  }
}

export function putCommand(key: string, value: string): Buffer {
  return packr.pack([key, value]);
}
