import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { SeededRandom } from '../../src/util/prng.ts';
import { LinkProxies } from './link-proxy.ts';
import { NetworkNamespaces } from './netns.ts';

const PORT = 7400;

/** An echo server in manager 1's namespace that first says where each connection came from. */
const SERVER = `require('net').createServer((s)=>{s.write('from '+s.remoteAddress+'\\n');s.pipe(s);s.on('error',()=>{})}).listen(${PORT},process.argv[1]);setTimeout(()=>{},120000)`;

/**
 * A client in manager 0's namespace, driven by lines on stdin: "connect HOST", "ping", "send N"
 * (N bytes). It prints what happens as lines: "line TEXT" for each line received,
 * "bytes N" as echoed bytes arrive, "error CODE", "closed", "refused".
 */
const CLIENT = `const net=require('net');let s=null;let got=0;const out=(l)=>process.stdout.write(l+'\\n');
require('readline').createInterface({input:process.stdin}).on('line',(l)=>{const [cmd,arg]=l.split(' ');
if(cmd==='connect'){s=net.connect(${PORT},arg);let buf='';s.setTimeout(1500,()=>{out('refused');s.destroy()});
s.on('connect',()=>{s.setTimeout(0);out('connected')});
s.on('data',(d)=>{got+=d.length;buf+=d.toString('latin1');let k;while((k=buf.indexOf('\\n'))>=0){out('line '+buf.slice(0,k));buf=buf.slice(k+1)}out('bytes '+got)});
s.on('error',(e)=>out('error '+e.code));s.on('close',()=>out('closed'))}
else if(cmd==='ping')s.write('ping '+Date.now()+'\\n');else if(cmd==='send')s.write(Buffer.alloc(Number(arg),120));});`;

class Lines {
  readonly #waiting: { match: RegExp; resolve: (line: string) => void }[] = [];
  readonly seen: string[] = [];
  constructor(child: ChildProcess) {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      this.seen.push(line);
      const k = this.#waiting.findIndex((w) => w.match.test(line));
      if (k >= 0) this.#waiting.splice(k, 1)[0]!.resolve(line);
    });
  }
  next(match: RegExp, timeoutMs = 5000): Promise<string> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no line ${match} within ${timeoutMs} ms; seen: ${this.seen.slice(-5).join(' | ')}`)),
        timeoutMs,
      );
      this.#waiting.push({
        match,
        resolve: (line) => {
          clearTimeout(timer);
          resolve(line);
        },
      });
    });
  }
}

const unavailable = NetworkNamespaces.unavailableBecause();

test('link proxies between namespaces: traffic goes through them, and they delay, stall (holding, not losing, bytes), limit bandwidth and reset; partitions still cut', {
  timeout: 90_000,
}, async () => {
  if (unavailable !== null) {
    assert.match(unavailable, /root|Linux|ip netns/);
    return;
  }
  assert.equal(
    NetworkNamespaces.linkProxiesUnavailableBecause(),
    null,
    'as root, install nftables (apt-get install nftables)',
  );
  const net = NetworkNamespaces.create(2);
  const children: ChildProcess[] = [];
  let proxies: LinkProxies | null = null;
  try {
    net.proxyLinks(PORT);
    proxies = await LinkProxies.start({
      size: 2,
      port: PORT,
      managerHost: (k) => net.host(k),
      linkAddress: (from, to) => net.linkAddress(from, to),
      random: new SeededRandom(1),
    });
    const [cmd, ...prefix] = net.prefix(1);
    children.push(spawn(cmd!, [...prefix, process.execPath, '-e', SERVER, net.host(1)], { stdio: 'ignore' }));
    const [ccmd, ...cprefix] = net.prefix(0);
    const client = spawn(ccmd!, [...cprefix, process.execPath, '-e', CLIENT], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(client);
    const lines = new Lines(client);
    const say = (line: string) => client.stdin!.write(`${line}\n`);
    const roundTripMs = async (): Promise<number> => {
      const started = Date.now();
      say('ping');
      await lines.next(/^line ping /);
      return Date.now() - started;
    };
    await new Promise((resolve) => setTimeout(resolve, 500));

    // Manager 0 dials manager 1's own address; the proxy answers, and manager 1 sees the address
    // that stands for manager 0.
    say(`connect ${net.host(1)}`);
    await lines.next(/^connected$/);
    assert.equal(await lines.next(/^line from /), `line from ${net.linkAddress(1, 0)}`);
    await roundTripMs(); // an echo comes back through the proxy

    // Delay on the bytes manager 0 sends: every round trip takes at least that long.
    proxies.set(0, 1, { delayMs: 300, jitterMs: 50 });
    for (let k = 0; k < 3; k++) assert.ok((await roundTripMs()) >= 300, 'delayed');
    proxies.clear();

    // One direction stalled: replies are held, not lost, and come out in order when it ends.
    proxies.set(1, 0, { stalled: true });
    const before = lines.seen.filter((l) => l.startsWith('line ping')).length;
    for (let k = 0; k < 5; k++) say('ping');
    await new Promise((resolve) => setTimeout(resolve, 800));
    assert.equal(lines.seen.filter((l) => l.startsWith('line ping')).length, before, 'nothing through a stall');
    proxies.set(1, 0, { stalled: false });
    await lines.next(/^line ping /);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const released = lines.seen.filter((l) => l.startsWith('line ping')).slice(before);
    assert.equal(released.length, 5, 'every held reply arrives');
    const stamps = released.map((l) => Number(l.split(' ')[2]));
    assert.deepEqual(
      stamps,
      [...stamps].sort((x, y) => x - y),
      'in order',
    );

    // Bandwidth: 64 KiB at 128 KiB/s takes about half a second.
    proxies.set(0, 1, { bytesPerS: 128 * 1024 });
    const bytesBefore = Number((lines.seen.filter((l) => l.startsWith('bytes ')).at(-1) ?? 'bytes 0').split(' ')[1]);
    const sentAt = Date.now();
    say(`send ${64 * 1024}`);
    await lines.next(new RegExp(`^bytes ${bytesBefore + 64 * 1024}$`), 10_000);
    assert.ok(Date.now() - sentAt >= 400, `limited: ${Date.now() - sentAt} ms`);
    proxies.clear();

    // A backlog built under a limit does not outlast it: 64 KiB at 1 KiB/s would take a minute.
    proxies.set(0, 1, { bytesPerS: 1024 });
    say(`send ${64 * 1024}`);
    await new Promise((resolve) => setTimeout(resolve, 300));
    proxies.clear();
    await lines.next(new RegExp(`^bytes ${bytesBefore + 2 * 64 * 1024}$`), 5000);

    // Reset: the connection is cut mid-stream, with a reset.
    assert.equal(proxies.reset(0, 1), 1);
    await lines.next(/^error ECONNRESET$/);

    // A cut link drops the proxied path too (the link's address is blackholed as well).
    await net.cut(0, 1);
    say(`connect ${net.host(1)}`);
    await lines.next(/^(refused|error .*)$/);
    await net.heal();
    say(`connect ${net.host(1)}`);
    await lines.next(/^connected$/);
  } finally {
    for (const child of children) child.kill('SIGKILL');
    await proxies?.close();
    net.destroy();
  }
});
