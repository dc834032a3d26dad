import COpenSSL
import Foundation

/// The hash algorithms attestation evidence uses, with their TPM algorithm identifiers.
public enum HashAlgorithm: String, Sendable, CaseIterable, Codable {
    case sha1, sha256, sha384, sha512

    /// TPM_ALG_ID (TCG Algorithm Registry).
    public var tpmAlgorithmID: UInt16 {
        switch self {
        case .sha1: 0x0004
        case .sha256: 0x000B
        case .sha384: 0x000C
        case .sha512: 0x000D
        }
    }

    public init?(tpmAlgorithmID id: UInt16) {
        guard let alg = Self.allCases.first(where: { $0.tpmAlgorithmID == id }) else { return nil }
        self = alg
    }

    public var digestSize: Int {
        switch self {
        case .sha1: 20
        case .sha256: 32
        case .sha384: 48
        case .sha512: 64
        }
    }

    var evpMD: OpaquePointer? {
        switch self {
        case .sha1: EVP_sha1()
        case .sha256: EVP_sha256()
        case .sha384: EVP_sha384()
        case .sha512: EVP_sha512()
        }
    }

    public func hash(_ data: Data) -> Data {
        hash([UInt8](data))
    }

    public func hash(_ bytes: [UInt8]) -> Data {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var len: UInt32 = 0
        let ok = bytes.withUnsafeBytes { raw in
            EVP_Digest(raw.baseAddress, raw.count, &out, &len, evpMD, nil)
        }
        // EVP_Digest fails only on allocation failure or a missing provider: a broken process.
        precondition(ok == 1, "EVP_Digest failed")
        return Data(out[0..<Int(len)])
    }

    /// PCR extend: `H(old ‖ value)`.
    public func extend(_ old: Data, with value: Data) -> Data {
        hash(old + value)
    }
}

/// An incremental hash, for inputs that arrive in pieces (files measured in chunks).
public final class IncrementalHash {
    private let ctx: OpaquePointer
    public let algorithm: HashAlgorithm

    public init(_ algorithm: HashAlgorithm) {
        self.algorithm = algorithm
        guard let ctx = EVP_MD_CTX_new() else { fatalError("EVP_MD_CTX_new failed") }
        self.ctx = ctx
        precondition(EVP_DigestInit_ex(ctx, algorithm.evpMD, nil) == 1)
    }

    deinit { EVP_MD_CTX_free(ctx) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        precondition(EVP_DigestUpdate(ctx, bytes.baseAddress, bytes.count) == 1)
    }

    public func finalize() -> Data {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var len: UInt32 = 0
        precondition(EVP_DigestFinal_ex(ctx, &out, &len) == 1)
        return Data(out[0..<Int(len)])
    }

    /// The digest of `parts`, each preceded by its length (8 bytes, little-endian), so that two
    /// different lists of parts never hash the same input: a key for what was computed from them.
    public static func framed(_ algorithm: HashAlgorithm, _ parts: [some ContiguousBytes]) -> Data {
        let hash = IncrementalHash(algorithm)
        for part in parts {
            part.withUnsafeBytes { bytes in
                withUnsafeBytes(of: UInt64(bytes.count).littleEndian) { hash.update($0) }
                hash.update(bytes)
            }
        }
        return hash.finalize()
    }
}
