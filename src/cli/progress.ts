/**
 * A one-line progress bar on stderr when stderr is a terminal; nothing elsewhere (scripts, logs),
 * so a piped or captured run stays clean. Redrawn at most ten times a second.
 */
const MiB = 1024 * 1024;
const WIDTH = 30;
const REDRAW_MS = 100;

export interface Progress {
  /** `total` 0 or less: not known (stdin, a backup being made); the bar then shows the count and the rate alone. */
  update(done: number, total: number): void;
  /** Takes the bar off the line, so a message can be written; the next update draws it again. */
  clear(): void;
  /** The last state drawn, then a new line (if anything was drawn); once. */
  end(): void;
}

export function progress(
  what: string,
  options: { unit?: 'bytes' | 'lines'; stream?: NodeJS.WriteStream } = {},
): Progress {
  const unit = options.unit ?? 'bytes';
  const stream = options.stream ?? process.stderr;
  const terminal = stream.isTTY === true;
  const startedAt = Date.now();
  let shown = false;
  let drawnAt = 0;
  let last: [number, number] | null = null;
  const draw = (done: number, total: number): void => {
    const known = total > 0;
    const share = known ? Math.min(1, done / total) : 0;
    const filled = Math.round(share * WIDTH);
    const bar = known ? ` [${'#'.repeat(filled)}${'.'.repeat(WIDTH - filled)}] ${(share * 100).toFixed(0)}%` : '';
    let tail: string;
    const seconds = (Date.now() - startedAt) / 1000;
    if (unit === 'bytes')
      tail = known
        ? ` of ${(total / MiB).toFixed(1)} MiB`
        : ` ${(done / MiB).toFixed(1)} MiB, ${(seconds > 0 ? done / MiB / seconds : 0).toFixed(1)} MiB/s`;
    else {
      const rate = seconds > 0 ? Math.round(done / seconds) : 0;
      tail = ` ${done}${known ? `/${total}` : ''} lines, ${rate} lines/s`;
    }
    stream.write(`\r${what}${bar}${tail}\x1b[K`);
    shown = true;
    drawnAt = Date.now();
  };
  return {
    update(done, total) {
      // Byte counts under a MiB go too fast to watch.
      if (!terminal || (unit === 'bytes' && (total > 0 ? total : done) < MiB)) return;
      last = [done, total];
      if (Date.now() - drawnAt >= REDRAW_MS || (total > 0 && done >= total)) draw(done, total);
    },
    clear() {
      if (terminal && shown) {
        stream.write('\r\x1b[K');
        drawnAt = 0;
      }
    },
    end() {
      if (!terminal || last === null) return;
      draw(last[0], last[1]);
      stream.write('\n');
      last = null;
    },
  };
}
