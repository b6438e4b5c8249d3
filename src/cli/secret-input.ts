import { createInterface } from 'node:readline';
import { StringDecoder } from 'node:string_decoder';

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
    // A character may come split over two reads; arrow keys and the like come as escape
    // sequences (ESC [ ... letter), which are not part of what is typed.
    const decoder = new StringDecoder('utf8');
    let inEscape = false;
    const onData = (chunk: Buffer): void => {
      for (const char of decoder.write(chunk)) {
        if (inEscape) {
          if (/[A-Za-z~]/.test(char)) inEscape = false;
          continue;
        }
        if (char === '\u001b') inEscape = true;
        else if (char === '\r' || char === '\n') return finish(null);
        else if (char === '\u0003') return finish(new Error('interrupted'));
        else if (char === '\u0004') return finish(typed === '' ? new Error(`no ${what} given`) : null);
        else if (char === '\u007f' || char === '\b') typed = [...typed].slice(0, -1).join('');
        else if (char >= ' ') typed += char;
      }
    };
    input.on('data', onData);
  });
}
