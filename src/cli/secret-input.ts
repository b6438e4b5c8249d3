import { createInterface } from 'node:readline';

/**
 * One line that must not show: on a terminal it is read with echo off (raw mode), else one line of
 * stdin (a pipe, a file). A password never comes from the command line, where `ps` shows it.
 */
export function readSecretLine(prompt: string, what: string): Promise<string> {
  const input = process.stdin;
  if (!input.isTTY) {
    const lines = createInterface({ input, terminal: false });
    return new Promise((resolve, reject) => {
      lines.once('line', (line) => {
        resolve(line.replace(/\r$/, ''));
        lines.close();
      });
      lines.once('close', () => reject(new Error(`stdin closed before ${what} was given`)));
    });
  }
  process.stderr.write(prompt);
  input.setRawMode(true);
  input.resume();
  return new Promise((resolve, reject) => {
    let typed = '';
    const finish = (error: Error | null): void => {
      input.setRawMode(false);
      input.pause();
      input.off('data', onData);
      process.stderr.write('\n');
      if (error === null) resolve(typed);
      else reject(error);
    };
    const onData = (chunk: Buffer): void => {
      for (const char of chunk.toString('utf8')) {
        if (char === '\r' || char === '\n') return finish(null);
        if (char === '\u0003') return finish(new Error('interrupted'));
        if (char === '\u0004') return finish(typed === '' ? new Error(`no ${what} given`) : null);
        if (char === '\u007f' || char === '\b') typed = typed.slice(0, -1);
        else typed += char;
      }
    };
    input.on('data', onData);
  });
}
