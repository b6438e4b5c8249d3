import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { NetworkNamespaces } from './netns.ts';

/** Tries a TCP connection from inside namespace `from` to host:port; true if it connected within 1 s. */
function connects(net: NetworkNamespaces, from: number, host: string, port: number): Promise<boolean> {
  const script = `const s=require('net').connect(${port},'${host}',()=>{s.end();process.exit(0)});s.on('error',()=>process.exit(1));setTimeout(()=>process.exit(2),1000)`;
  return new Promise((resolve) => {
    const child = spawn(net.prefix(from)[0]!, [...net.prefix(from).slice(1), process.execPath, '-e', script], {
      stdio: 'ignore',
    });
    child.on('exit', (code) => resolve(code === 0));
  });
}

const unavailable = NetworkNamespaces.unavailableBecause();

test('network namespaces: a bridge joins them, a cut drops traffic both ways until healed, and nothing is left behind', {
  timeout: 60_000,
}, async () => {
  if (unavailable !== null) {
    // Without root the harness runs on loopback; it must say why.
    assert.match(unavailable, /root|Linux|ip netns/);
    return;
  }
  const net = NetworkNamespaces.create(3);
  const server = spawn(
    net.prefix(0)[0]!,
    [
      ...net.prefix(0).slice(1),
      process.execPath,
      '-e',
      `require('net').createServer((s)=>s.end()).listen(7400,'${net.host(0)}');setTimeout(()=>{},60000)`,
    ],
    { stdio: 'ignore' },
  );
  try {
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.equal(await connects(net, 1, net.host(0), 7400), true, 'manager 2 reaches manager 1');
    assert.equal(await connects(net, 2, net.host(0), 7400), true, 'manager 3 reaches manager 1');
    await net.partition([[0], [1, 2]]);
    assert.equal(await connects(net, 1, net.host(0), 7400), false, 'cut: 2 cannot reach 1');
    assert.equal(await connects(net, 2, net.host(0), 7400), false, 'cut: 3 cannot reach 1');
    await net.heal();
    await net.cut(0, 1); // one way: 1 cannot send to 2, so 2's connections to 1 never complete either
    assert.equal(await connects(net, 1, net.host(0), 7400), false, 'one-way cut breaks TCP');
    assert.equal(await connects(net, 2, net.host(0), 7400), true, 'the other link is untouched');
    await net.heal();
    assert.equal(await connects(net, 1, net.host(0), 7400), true, 'healed');
  } finally {
    server.kill('SIGKILL');
    net.destroy();
  }
  const left = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  for (let k = 0; k < 3; k++) assert.ok(!left.includes(net.namespace(k)), `namespace ${net.namespace(k)} removed`);
  // A namespace left by a harness that died (a PID that is not running) is swept by the next one.
  const stale = 'cf4194303z-m1';
  execFileSync('ip', ['netns', 'add', stale]);
  assert.ok(NetworkNamespaces.sweepStale().includes(stale));
  assert.ok(!execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).includes(stale));
});
