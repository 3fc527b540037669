// The seed's Express example, as a merchant would write it from PayFlow's documentation:
// express.json() and its verifyWebhookSignature (HMAC over JSON.stringify(payload)).
// Usage: node server.js PORT SECRET
const crypto = require('crypto');
const express = require('express');

const [port, secret] = [Number(process.argv[2] || 3000), process.argv[3] || 'whsec_bench_secret'];

function verifyWebhookSignature(payload, signature, secret) {
  const expectedSignature = crypto
    .createHmac('sha256', secret)
    .update(JSON.stringify(payload))
    .digest('hex');

  return crypto.timingSafeEqual(
    Buffer.from(signature),
    Buffer.from(expectedSignature)
  );
}

const app = express();
app.use(express.json());
app.post('/webhooks/payflow', (req, res) => {
  const signature = req.headers['x-payflow-signature'] || '';
  let ok = false;
  try { ok = verifyWebhookSignature(req.body, signature, secret); } catch { ok = false; }
  if (!ok) return res.status(401).json({ error: 'invalid signature' });
  res.json({ received: true });
});
app.listen(port, '127.0.0.1', () => console.log(`express listening on http://127.0.0.1:${port}`));
