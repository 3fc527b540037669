// payflow-edge example plugin (JavaScript, componentize-js): adds a display form of the
// amount to payment events (`data.amount_display`, e.g. "5,000.50 PKR"), tags the event with
// its currency, and counts events per type in the plugin's key-value space, passing the count
// on in an `X-Event-Count` header. Every event continues.
import { log, config, kvGet, kvSet } from 'payflow:plugin/host@0.1.0';

const decoder = new TextDecoder();
const encoder = new TextEncoder();

function display(amount, currency) {
  // Amounts arrive in the smallest unit; every seed currency has two decimals.
  // Grouped by hand: the JS engine in the component has no Intl data.
  const whole = String(Math.trunc(Math.abs(amount) / 100)).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  const sign = amount < 0 ? '-' : '';
  const cents = String(Math.abs(amount % 100)).padStart(2, '0');
  return `${sign}${whole}.${cents} ${currency}`;
}

function count(type) {
  const key = `count:${type}`;
  const stored = kvGet(key);
  const next = (stored ? Number(decoder.decode(stored)) : 0) + 1;
  kvSet(key, encoder.encode(String(next)));
  return next;
}

export const handler = {
  handle(event) {
    const outcome = { action: { tag: 'continue' }, headers: [], forwards: [], tags: [] };
    const seen = count(event.eventType || 'unknown');
    outcome.headers.push({ name: 'X-Event-Count', value: String(seen) });
    if (!event.eventType.startsWith('payment.')) {
      return outcome;
    }
    const body = JSON.parse(decoder.decode(event.body));
    const { amount, currency } = body.data ?? {};
    if (!Number.isInteger(amount) || typeof currency !== 'string') {
      throw `payment event ${event.id} has no integer amount and currency`;
    }
    body.data.amount_display = display(amount, currency);
    if (config('log') === 'verbose') {
      log('info', `${event.id}: ${body.data.amount_display}`);
    }
    outcome.body = encoder.encode(JSON.stringify(body));
    outcome.tags.push(`currency:${currency}`);
    return outcome;
  },
};
