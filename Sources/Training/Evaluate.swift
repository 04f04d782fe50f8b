import Data
import Distributed
import Foundation
import GPT2

/// Mean next-token cross-entropy over `batches` consecutive batches of the shared batch order
/// (batch s starts at token (s mod M)·B·T). Rows of each batch are split over ranks as in training
/// and run through `graph` (micro-batch rows at a time, dropout off); the mean is over all B·T·batches positions.
public func evaluateLoss(graph: GPT2Graph, data: TokenDataset, batchSize: Int, seqLen: Int, batches: Int,
                         comm: Communicator) throws -> Double {
    let order = try BatchOrder(tokenCount: data.count, batchSize: batchSize, seqLen: seqLen)
    let rowsPerRank = batchSize / comm.size, micro = graph.batch
    precondition(batchSize % comm.size == 0 && rowsPerRank % micro == 0)
    var total = [0.0]
    for s in 0..<batches {
        for k in 0..<(rowsPerRank / micro) {
            let first = comm.rank * rowsPerRank + k * micro
            order.fill(data, step: s, firstRow: first, rows: micro, inputs: graph.inputs.pointer, targets: graph.targets.pointer)
            graph.forward(step: s, rowOffset: first, training: false)
            total[0] += graph.lossSum
        }
    }
    comm.allReduceSum(&total)
    return total[0] / Double(batches * batchSize * seqLen)
}
