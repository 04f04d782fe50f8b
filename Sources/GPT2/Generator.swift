import Autograd
import Common
import Foundation

/// Autoregressive decoding with a key/value cache: each new token runs the blocks on one position
/// and attends over the cached keys and values, so it costs O(parameters + context), not a full forward.
public final class GPT2Generator {
    public let model: GPT2Model
    let cfg: GPT2Config
    let kCache: FloatBuffer, vCache: FloatBuffer  // [L, ctx, C]
    let x: FloatBuffer, h: FloatBuffer, qkv: FloatBuffer, att: FloatBuffer, fc: FloatBuffer, scores: FloatBuffer
    public let logits: FloatBuffer
    public private(set) var length = 0

    public init(model: GPT2Model) {
        self.model = model
        cfg = model.config
        let C = cfg.embDim, L = cfg.nLayers, ctx = cfg.contextLength
        kCache = FloatBuffer(count: L * ctx * C); vCache = FloatBuffer(count: L * ctx * C)
        x = FloatBuffer(count: C); h = FloatBuffer(count: C); qkv = FloatBuffer(count: 3 * C)
        att = FloatBuffer(count: C); fc = FloatBuffer(count: 8 * C); scores = FloatBuffer(count: ctx)
        logits = FloatBuffer(count: cfg.vocabSize)
    }

    public func reset() { length = 0 }

    /// Feeds one token at the next position; afterwards `logits` holds the next-token logits.
    public func append(token: Int) {
        precondition(length < cfg.contextLength, "context_length reached")
        precondition(token >= 0 && token < cfg.vocabSize, "token id out of range")
        let C = cfg.embDim, H = cfg.nHeads, hs = cfg.headSize, ctx = cfg.contextLength
        let p = model.parameters, pos = length
        let xp = x.pointer, hp = h.pointer
        let wte = p.tensor("wte").data, wpe = p.tensor("wpe").data
        for c in 0..<C { xp[c] = wte[token * C + c] + wpe[pos * C + c] }
        let scale = 1 / Float(hs).squareRoot()
        for l in 0..<cfg.nLayers {
            let n = "h.\(l)."
            _ = Kernels.layerNorm(xp, p.tensor(n + "ln_1.weight").data, p.tensor(n + "ln_1.bias").data, hp, C)
            linear(hp, n + "attn.c_attn", C, 3 * C, qkv.pointer, bias: cfg.qkvBias)
            let kc = kCache.pointer + (l * ctx) * C, vc = vCache.pointer + (l * ctx) * C
            memcpy(kc + pos * C, qkv.pointer + C, C * 4)
            memcpy(vc + pos * C, qkv.pointer + 2 * C, C * 4)
            for head in 0..<H {
                let q = qkv.pointer + head * hs, s = scores.pointer
                // scores[j] = q · k_j over cached positions 0...pos
                BLAS.gemv(.none, m: pos + 1, n: hs, alpha: scale, a: kc + head * hs, lda: C, x: q, beta: 0, y: s)
                Kernels.softmax(s, pos + 1)
                BLAS.gemv(.transpose, m: pos + 1, n: hs, a: vc + head * hs, lda: C, x: s, beta: 0, y: att.pointer + head * hs)
            }
            linear(att.pointer, n + "attn.c_proj", C, C, hp, bias: true)
            for c in 0..<C { xp[c] += hp[c] }
            _ = Kernels.layerNorm(xp, p.tensor(n + "ln_2.weight").data, p.tensor(n + "ln_2.bias").data, hp, C)
            linear(hp, n + "mlp.c_fc", C, 4 * C, fc.pointer, bias: true)
            Kernels.gelu(fc.pointer, fc.pointer + 4 * C, 4 * C)
            linear(fc.pointer + 4 * C, n + "mlp.c_proj", 4 * C, C, hp, bias: true)
            for c in 0..<C { xp[c] += hp[c] }
        }
        _ = Kernels.layerNorm(xp, p.tensor("ln_f.weight").data, p.tensor("ln_f.bias").data, hp, C)
        BLAS.gemv(.none, m: cfg.vocabSize, n: C, a: wte, lda: C, x: hp, beta: 0, y: logits.pointer)
        length += 1
    }

    /// y = x @ W + b for one row, W input-major [inDim, outDim].
    private func linear(_ xIn: UnsafePointer<Float>, _ name: String, _ inDim: Int, _ outDim: Int,
                        _ y: UnsafeMutablePointer<Float>, bias: Bool) {
        let p = model.parameters
        if bias { memcpy(y, p.tensor(name + ".bias").data, outDim * 4) }
        BLAS.gemv(.transpose, m: inDim, n: outDim, a: p.tensor(name + ".weight").data, lda: outDim, x: xIn,
                  beta: bias ? 1 : 0, y: y)
    }

    /// Picks the next token from `logits`: argmax at temperature 0, else a sample from
    /// softmax(logits / temperature) restricted to the top-k (k = 0: all), drawn with `uniform` in [0, 1).
    public func pick(temperature: Float, topK: Int, uniform: Float) -> Int {
        let V = cfg.vocabSize, l = logits.pointer
        if temperature <= 0 {
            var best = 0
            for i in 1..<V where l[i] > l[best] { best = i }
            return best
        }
        var order = Array(0..<V)
        if topK > 0 && topK < V {
            order.sort { l[$0] > l[$1] || (l[$0] == l[$1] && $0 < $1) }
            order.removeSubrange(topK...)
        }
        let m = order.map { l[$0] }.max()!
        let w = order.map { Double(exp((l[$0] - m) / temperature)) }
        let total = w.reduce(0, +)
        var r = Double(uniform) * total
        for (i, wi) in zip(order, w) {
            r -= wi
            if r < 0 { return i }
        }
        return order.last!
    }

    /// Generates `count` tokens after `prompt`. The model sees at most the last context_length tokens, as in
    /// nanoGPT: a longer prompt is cropped, and once the window is full every new token is predicted from the
    /// last context_length tokens (the cache is refilled from that window, since positions shift).
    public func generate(prompt: [Int], count: Int, temperature: Float = 0, topK: Int = 0, seed: UInt64 = 0,
                         onToken: ((Int) -> Void)? = nil) -> [Int] {
        var window = Array(prompt.suffix(cfg.contextLength))
        func prefill() {
            reset()
            for t in window { append(token: t) }
        }
        prefill()
        var out: [Int] = []
        let key = CounterRandom.key(seed, 0x6E6E)
        for i in 0..<count {
            let next = pick(temperature: temperature, topK: topK, uniform: CounterRandom.uniform(key, UInt64(i)))
            out.append(next)
            onToken?(next)
            if i == count - 1 { break }
            window.append(next)
            if length < cfg.contextLength {
                append(token: next)
            } else {
                window.removeFirst(window.count - cfg.contextLength)
                prefill()
            }
        }
        return out
    }
}
