import CVulkan
import Foundation

/// A storage buffer with its own memory. `host` buffers are mapped for the CPU; device buffers
/// live in device-local memory where the device has it.
public final class VulkanBuffer: @unchecked Sendable {
    public enum Placement: Sendable {
        /// Device-local; the CPU reaches it through a staging copy unless it is also host-visible.
        case device
        /// Host-visible and coherent, mapped for the CPU (inputs, readbacks, staging).
        case host
    }

    let device: VulkanDevice
    let handle: VkBuffer
    let memory: VkDeviceMemory
    public let size: Int
    /// Mapped pointer when the memory is host-visible.
    let mapped: UnsafeMutableRawPointer?

    init(device: VulkanDevice, size: Int, placement: Placement) throws(InferenceError) {
        self.device = device
        self.size = max(size, 16)
        var info = VkBufferCreateInfo()
        info.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO
        info.size = VkDeviceSize(self.size)
        info.usage =
            VK_BUFFER_USAGE_STORAGE_BUFFER_BIT.rawValue | VK_BUFFER_USAGE_TRANSFER_SRC_BIT.rawValue
            | VK_BUFFER_USAGE_TRANSFER_DST_BIT.rawValue
        info.sharingMode = VK_SHARING_MODE_EXCLUSIVE
        var buffer: VkBuffer?
        try vkCheck(vkCreateBuffer(device.handle, &info, nil, &buffer), "vkCreateBuffer(\(self.size) bytes)")
        handle = buffer!
        var requirements = VkMemoryRequirements()
        vkGetBufferMemoryRequirements(device.handle, handle, &requirements)
        let hostBits = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT.rawValue | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT.rawValue
        let localBit = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT.rawValue
        // Candidates in order of preference. Device buffers fall back to host-visible memory
        // when device-local memory runs out: slower, but the model still loads.
        let candidates: [UInt32?] =
            switch placement {
            case .device:
                [
                    device.memoryType(bits: requirements.memoryTypeBits, required: localBit),
                    device.memoryType(bits: requirements.memoryTypeBits, required: hostBits),
                    device.memoryType(bits: requirements.memoryTypeBits, required: 0),
                ]
            case .host:
                [
                    device.memoryType(
                        bits: requirements.memoryTypeBits, required: hostBits,
                        preferred: VK_MEMORY_PROPERTY_HOST_CACHED_BIT.rawValue)
                ]
            }
        var chosen: (type: UInt32, memory: VkDeviceMemory)?
        var lastFailure = VK_ERROR_OUT_OF_DEVICE_MEMORY
        var tried = Set<UInt32>()
        for case let type? in candidates where tried.insert(type).inserted {
            var alloc = VkMemoryAllocateInfo()
            alloc.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO
            alloc.allocationSize = requirements.size
            alloc.memoryTypeIndex = type
            var mem: VkDeviceMemory?
            let allocated = vkAllocateMemory(device.handle, &alloc, nil, &mem)
            if allocated == VK_SUCCESS, let mem {
                chosen = (type, mem)
                break
            }
            lastFailure = allocated
        }
        guard let chosen else {
            vkDestroyBuffer(device.handle, handle, nil)
            throw InferenceError(
                .vulkanFailed,
                "allocating \(self.size) bytes of \(placement) memory failed: \(vkResultName(lastFailure))")
        }
        let type = chosen.type
        let mem: VkDeviceMemory? = chosen.memory
        memory = mem!
        try vkCheck(vkBindBufferMemory(device.handle, handle, memory, 0), "vkBindBufferMemory")
        if device.memoryTypeFlags(type) & hostBits == hostBits {
            var pointer: UnsafeMutableRawPointer?
            try vkCheck(vkMapMemory(device.handle, memory, 0, VkDeviceSize(VK_WHOLE_SIZE), 0, &pointer), "vkMapMemory")
            mapped = pointer
        } else {
            mapped = nil
        }
    }

    deinit {
        if mapped != nil { vkUnmapMemory(device.handle, memory) }
        vkDestroyBuffer(device.handle, handle, nil)
        vkFreeMemory(device.handle, memory, nil)
    }
}

/// A compute pipeline made from embedded SPIR-V, with `bindings` storage buffers and up to 128
/// bytes of push constants; specialization constants 0, 1, 2, … take `specialization`.
public final class VulkanKernel: @unchecked Sendable {
    let device: VulkanDevice
    public let name: String
    let bindings: Int
    let setLayout: VkDescriptorSetLayout
    let layout: VkPipelineLayout
    let pipeline: VkPipeline
    let module: VkShaderModule
    /// Descriptor sets already made, by the buffers they bind.
    var sets: [[ObjectIdentifier]: VkDescriptorSet] = [:]

    init(device: VulkanDevice, name: String, spirv: [UInt32], bindings: Int, specialization: [UInt32] = [])
        throws(InferenceError)
    {
        self.device = device
        self.name = name
        self.bindings = bindings
        var moduleInfo = VkShaderModuleCreateInfo()
        moduleInfo.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO
        moduleInfo.codeSize = spirv.count * 4
        var m: VkShaderModule?
        let made = spirv.withUnsafeBufferPointer { code in
            moduleInfo.pCode = code.baseAddress
            return vkCreateShaderModule(device.handle, &moduleInfo, nil, &m)
        }
        try vkCheck(made, "vkCreateShaderModule(\(name))")
        let shaderModule = m!
        module = shaderModule

        var layoutBindings = (0..<bindings).map { i in
            VkDescriptorSetLayoutBinding(
                binding: UInt32(i), descriptorType: VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount: 1,
                stageFlags: VK_SHADER_STAGE_COMPUTE_BIT.rawValue, pImmutableSamplers: nil)
        }
        var setInfo = VkDescriptorSetLayoutCreateInfo()
        setInfo.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO
        setInfo.bindingCount = UInt32(bindings)
        var sl: VkDescriptorSetLayout?
        let slMade = layoutBindings.withUnsafeMutableBufferPointer { b in
            setInfo.pBindings = UnsafePointer(b.baseAddress)
            return vkCreateDescriptorSetLayout(device.handle, &setInfo, nil, &sl)
        }
        try vkCheck(slMade, "vkCreateDescriptorSetLayout")
        setLayout = sl!

        var range = VkPushConstantRange(stageFlags: VK_SHADER_STAGE_COMPUTE_BIT.rawValue, offset: 0, size: 128)
        var pipelineLayoutInfo = VkPipelineLayoutCreateInfo()
        pipelineLayoutInfo.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO
        pipelineLayoutInfo.setLayoutCount = 1
        pipelineLayoutInfo.pushConstantRangeCount = 1
        var pl: VkPipelineLayout?
        var setLayoutOptional: VkDescriptorSetLayout? = setLayout
        let plMade = withUnsafePointer(to: &setLayoutOptional) { layoutPointer in
            withUnsafePointer(to: &range) { rangePointer in
                pipelineLayoutInfo.pSetLayouts = layoutPointer
                pipelineLayoutInfo.pPushConstantRanges = rangePointer
                return vkCreatePipelineLayout(device.handle, &pipelineLayoutInfo, nil, &pl)
            }
        }
        try vkCheck(plMade, "vkCreatePipelineLayout")
        let pipelineLayout = pl!
        layout = pipelineLayout

        var entries = specialization.indices.map {
            VkSpecializationMapEntry(constantID: UInt32($0), offset: UInt32($0 * 4), size: 4)
        }
        var values = specialization
        var p: VkPipeline?
        let pMade: VkResult = "main".withCString { entry in
            entries.withUnsafeMutableBufferPointer { entryPointer in
                values.withUnsafeMutableBytes { valuePointer in
                    var spec = VkSpecializationInfo(
                        mapEntryCount: UInt32(specialization.count),
                        pMapEntries: UnsafePointer(entryPointer.baseAddress),
                        dataSize: specialization.count * 4, pData: UnsafeRawPointer(valuePointer.baseAddress))
                    return withUnsafePointer(to: &spec) { specPointer in
                        var stage = VkPipelineShaderStageCreateInfo()
                        stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO
                        stage.stage = VK_SHADER_STAGE_COMPUTE_BIT
                        stage.module = shaderModule
                        stage.pName = entry
                        stage.pSpecializationInfo = specialization.isEmpty ? nil : specPointer
                        var info = VkComputePipelineCreateInfo()
                        info.sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO
                        info.stage = stage
                        info.layout = pipelineLayout
                        return vkCreateComputePipelines(device.handle, nil, 1, &info, nil, &p)
                    }
                }
            }
        }
        try vkCheck(pMade, "vkCreateComputePipelines(\(name))")
        pipeline = p!
    }

    deinit {
        vkDestroyPipeline(device.handle, pipeline, nil)
        vkDestroyPipelineLayout(device.handle, layout, nil)
        vkDestroyDescriptorSetLayout(device.handle, setLayout, nil)
        vkDestroyShaderModule(device.handle, module, nil)
    }

    /// The descriptor set binding exactly `buffers`, made on first use.
    func descriptorSet(_ buffers: [VulkanBuffer]) throws(InferenceError) -> VkDescriptorSet {
        precondition(buffers.count == bindings, "\(name) binds \(bindings) buffers, got \(buffers.count)")
        let key = buffers.map { ObjectIdentifier($0) }
        if let set = sets[key] { return set }
        var allocInfo = VkDescriptorSetAllocateInfo()
        allocInfo.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO
        allocInfo.descriptorPool = device.descriptorPool
        allocInfo.descriptorSetCount = 1
        var set: VkDescriptorSet?
        var sl: VkDescriptorSetLayout? = setLayout
        let made = withUnsafePointer(to: &sl) { p in
            allocInfo.pSetLayouts = p
            return vkAllocateDescriptorSets(device.handle, &allocInfo, &set)
        }
        try vkCheck(made, "vkAllocateDescriptorSets(\(name))")
        var infos = buffers.map {
            VkDescriptorBufferInfo(buffer: $0.handle, offset: 0, range: VkDeviceSize(VK_WHOLE_SIZE))
        }
        infos.withUnsafeMutableBufferPointer { infoPointer in
            var writes = (0..<buffers.count).map { i -> VkWriteDescriptorSet in
                var w = VkWriteDescriptorSet()
                w.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET
                w.dstSet = set
                w.dstBinding = UInt32(i)
                w.descriptorCount = 1
                w.descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
                w.pBufferInfo = UnsafePointer(infoPointer.baseAddress! + i)
                return w
            }
            vkUpdateDescriptorSets(device.handle, UInt32(writes.count), &writes, 0, nil)
        }
        sets[key] = set!
        return set!
    }
}

/// Records one command buffer of copies and dispatches, each dispatch ordered after the work
/// before it, then submits it and waits.
public final class VulkanCommands: @unchecked Sendable {
    let device: VulkanDevice
    let buffer: VkCommandBuffer
    var recording = false

    init(device: VulkanDevice) throws(InferenceError) {
        self.device = device
        var info = VkCommandBufferAllocateInfo()
        info.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO
        info.commandPool = device.commandPool
        info.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY
        info.commandBufferCount = 1
        var cb: VkCommandBuffer?
        try vkCheck(vkAllocateCommandBuffers(device.handle, &info, &cb), "vkAllocateCommandBuffers")
        buffer = cb!
    }

    func begin() throws(InferenceError) {
        try vkCheck(vkResetCommandBuffer(buffer, 0), "vkResetCommandBuffer")
        var info = VkCommandBufferBeginInfo()
        info.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO
        info.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT.rawValue
        try vkCheck(vkBeginCommandBuffer(buffer, &info), "vkBeginCommandBuffer")
        recording = true
    }

    /// Makes all earlier shader writes and copies visible to later shaders and copies.
    func barrier() {
        var b = VkMemoryBarrier()
        b.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER
        b.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT.rawValue | VK_ACCESS_TRANSFER_WRITE_BIT.rawValue
        b.dstAccessMask =
            VK_ACCESS_SHADER_READ_BIT.rawValue | VK_ACCESS_SHADER_WRITE_BIT.rawValue
            | VK_ACCESS_TRANSFER_READ_BIT.rawValue
            | VK_ACCESS_TRANSFER_WRITE_BIT.rawValue
        let stages = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT.rawValue | VK_PIPELINE_STAGE_TRANSFER_BIT.rawValue
        vkCmdPipelineBarrier(buffer, stages, stages, 0, 1, &b, 0, nil, 0, nil)
    }

    func copy(_ from: VulkanBuffer, _ to: VulkanBuffer, bytes: Int, fromOffset: Int = 0, toOffset: Int = 0) {
        var region = VkBufferCopy(
            srcOffset: VkDeviceSize(fromOffset), dstOffset: VkDeviceSize(toOffset), size: VkDeviceSize(bytes))
        vkCmdCopyBuffer(buffer, from.handle, to.handle, 1, &region)
    }

    /// Records `kernel` over `groups` workgroups, after a barrier unless `after` is false.
    func dispatch(
        _ kernel: VulkanKernel, _ buffers: [VulkanBuffer], push: [UInt32], groups: (Int, Int, Int),
        barrier before: Bool = true
    )
        throws(InferenceError)
    {
        precondition(push.count <= 32)
        if before { barrier() }
        vkCmdBindPipeline(buffer, VK_PIPELINE_BIND_POINT_COMPUTE, kernel.pipeline)
        var set: VkDescriptorSet? = try kernel.descriptorSet(buffers)
        vkCmdBindDescriptorSets(buffer, VK_PIPELINE_BIND_POINT_COMPUTE, kernel.layout, 0, 1, &set, 0, nil)
        if !push.isEmpty {
            push.withUnsafeBytes { raw in
                vkCmdPushConstants(
                    buffer, kernel.layout, VK_SHADER_STAGE_COMPUTE_BIT.rawValue, 0, UInt32(raw.count), raw.baseAddress)
            }
        }
        vkCmdDispatch(buffer, UInt32(groups.0), UInt32(groups.1), UInt32(groups.2))
    }

    /// Ends, submits and waits. A lost device is `vulkan.failed`.
    func submitAndWait() throws(InferenceError) {
        recording = false
        try vkCheck(vkEndCommandBuffer(buffer), "vkEndCommandBuffer")
        var submit = VkSubmitInfo()
        submit.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO
        submit.commandBufferCount = 1
        var cb: VkCommandBuffer? = buffer
        let submitted = withUnsafePointer(to: &cb) { p in
            submit.pCommandBuffers = p
            return vkQueueSubmit(device.queue, 1, &submit, device.fence)
        }
        try vkCheck(submitted, "vkQueueSubmit")
        var fence: VkFence? = device.fence
        let waited = vkWaitForFences(device.handle, 1, &fence, VkBool32(VK_TRUE), UInt64.max)
        vkResetFences(device.handle, 1, &fence)
        try vkCheck(waited, "vkWaitForFences")
    }
}

extension VulkanDevice {
    public func makeBuffer(bytes: Int, placement: VulkanBuffer.Placement) throws(InferenceError) -> VulkanBuffer {
        try VulkanBuffer(device: self, size: bytes, placement: placement)
    }

    func makeKernel(_ name: String, bindings: Int, specialization: [UInt32] = []) throws(InferenceError) -> VulkanKernel
    {
        guard let code = EmbeddedShaders.spirv(name) else {
            throw InferenceError(.vulkanFailed, "shader \(name) is not embedded")
        }
        return try VulkanKernel(
            device: self, name: name, spirv: code, bindings: bindings, specialization: specialization)
    }

    func makeCommands() throws(InferenceError) -> VulkanCommands { try VulkanCommands(device: self) }

    /// Writes `bytes` into a buffer: directly when it is mapped, else through a staging copy.
    func upload(_ bytes: UnsafeRawBufferPointer, to target: VulkanBuffer, offset: Int = 0) throws(InferenceError) {
        precondition(offset + bytes.count <= target.size)
        if let mapped = target.mapped {
            (mapped + offset).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            return
        }
        let chunk = 64 << 20
        let staging = try makeBuffer(bytes: min(chunk, bytes.count), placement: .host)
        let commands = try makeCommands()
        var done = 0
        while done < bytes.count {
            let n = min(chunk, bytes.count - done)
            staging.mapped!.copyMemory(from: bytes.baseAddress! + done, byteCount: n)
            try commands.begin()
            commands.copy(staging, target, bytes: n, toOffset: offset + done)
            try commands.submitAndWait()
            done += n
        }
    }
}

extension EmbeddedShaders {
    /// The SPIR-V words of shader `name`.
    static func spirv(_ name: String) -> [UInt32]? {
        guard let base64 = modules[name], let data = Data(base64Encoded: base64), data.count % 4 == 0 else {
            return nil
        }
        return data.withUnsafeBytes { Array($0.bindMemory(to: UInt32.self)) }
    }
}
