import * as tls from 'node:tls';

/** Each handshake attempt is bounded: a hung one fails the test instead of holding it. */
export const HANDSHAKE_TIMEOUT_MS = 3000;

export type Handshake = { ok: true; protocol: string | null; cipher: string } | { ok: false; error: string };

/** A node:tls client handshake with these options against 127.0.0.1:port; the socket is always closed. */
export function handshake(port: number, options: tls.ConnectionOptions): Promise<Handshake> {
  return new Promise((resolve) => {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      ALPNProtocols: ['h2'],
      rejectUnauthorized: false,
      ...options,
    });
    const timer = setTimeout(() => finish({ ok: false, error: 'timed out' }), HANDSHAKE_TIMEOUT_MS);
    function finish(result: Handshake): void {
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    }
    socket.once('secureConnect', () =>
      finish({ ok: true, protocol: socket.getProtocol(), cipher: socket.getCipher().name }),
    );
    socket.once('error', (error) => finish({ ok: false, error: error.message }));
    socket.once('close', () => finish({ ok: false, error: 'closed before the handshake finished' }));
  });
}
