/** A stored record that cannot be trusted: its checksum fails, or it does not decode. */
export class CorruptRecordError extends Error {
  override name = 'CorruptRecordError';
  readonly code = 'RECORD_CORRUPT';
  /** Which record: e.g. `raft entry 1234` or `hard state`. */
  readonly record: string;

  constructor(record: string, problem: string, options?: { cause?: unknown }) {
    super(`${record} is corrupt: ${problem}`, options);
    this.record = record;
  }
}
