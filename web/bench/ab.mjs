// A/B of two builds of the package in one Node process: node web/bench/ab.mjs DIR_A DIR_B
import crypto from 'node:crypto';
import { SECRET, T, body1k, compare } from './workload.mjs';
const [a, b] = await Promise.all(process.argv.slice(2, 4).map((d) => import(`${d}/index.js`)));
const body = body1k();
const mac = crypto.createHmac('sha256', SECRET).update(`${T}.`).update(body).digest('hex');
const options = { scheme: 'payflow', secrets: [SECRET], headers: { 'x-payflow-signature': `t=${T},v1=${mac}` }, body, now: T };
if (!a.verify(options).ok || !b.verify(options).ok) throw new Error('does not verify');
console.log(JSON.stringify(await compare({ A: () => a.verify(options).ok, B: () => b.verify(options).ok }, 7)));
